//! What arrives and how it is kept safe before it is sealed: request bodies parsed into batches (`parse`), and
//! the write-ahead log those batches are made durable in (`wal`, behind the interface of `log`). Formats and files only: the state that uses
//! them lives in `store`.

pub mod log;
pub mod nats;
pub mod parse;
pub mod wal;
