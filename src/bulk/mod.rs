//! Work on whole ranges of a series: exports (shared by `GET .../export` and `hourglass export`), histograms
//! that read events (filtered, grouped, aggregated), and imports of archives written by other tools
//! (`hourglass import`).

pub mod aggregate;
pub mod export;
pub mod import;
