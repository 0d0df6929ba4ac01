//! Log output: env_logger to stderr, with the level from `--log-level` or,
//! without it, `RUST_LOG` (default `info`). Callers format their messages.

use std::io::Write;

use log::LevelFilter;

pub fn init(level: Option<LevelFilter>) {
    let mut builder = env_logger::Builder::new();
    match level {
        Some(l) => {
            builder.filter_level(l);
        }
        None => {
            builder.filter_level(LevelFilter::Info);
            if let Ok(spec) = std::env::var("RUST_LOG") {
                builder.parse_filters(&spec);
            }
        }
    }
    builder.format(|buf, record| {
        writeln!(
            buf,
            "{} {:<5} {}",
            buf.timestamp_millis(),
            record.level(),
            record.args()
        )
    });
    // A second init (tests) keeps the first logger.
    let _ = builder.try_init();
}
