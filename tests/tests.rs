//! Integration tests: the batch mode over real files and a real RocksDB,
//! the codecs over the checked-in examples, the store conformance suite,
//! golden outputs, and property tests of the fold.

mod it;
