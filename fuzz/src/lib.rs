//! hatune's fuzz targets: one binary per parser in `src/bin/`, each running one check of
//! `checks` under AFL++, and `seeds`, which writes their starting corpus.

mod checks;

pub use checks::*;
