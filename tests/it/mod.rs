mod batch;
mod codec;
mod common;
mod golden;
mod kafka;
mod props;
mod store;
