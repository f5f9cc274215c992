//! Work on whole ranges of a series: exports (shared by `GET .../export` and `hourglass export`) and imports
//! of archives written by other tools (`hourglass import`).

pub mod export;
pub mod import;
