mod batch;
mod codec;
mod common;
mod golden;
mod props;
mod store;
