//! Progress bars for long commands, on stderr and only when stderr is a terminal:
//! scripts and pipes see nothing extra.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::store::Progress;

/// A bar counting `unit`s (events, rows, deliveries); hidden off a terminal.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new(message: &str, unit: &str) -> Bar {
        Bar::drawn(
            &format!("{{msg}} {{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left)"),
            ProgressStyle::default_bar,
            message,
            Duration::from_millis(200),
        )
    }

    /// A running count, for work whose size is not known in advance.
    pub fn counter(message: &str, unit: &str) -> Bar {
        Bar::drawn(
            &format!("{{spinner}} {{msg}} {{pos}} {unit} ({{per_sec}})"),
            ProgressStyle::default_spinner,
            message,
            Duration::from_millis(120),
        )
    }

    /// A spinner for work that reports nothing until it ends.
    pub fn spinner(message: &str) -> Bar {
        Bar::drawn(
            "{spinner} {msg} ({elapsed})",
            ProgressStyle::default_spinner,
            message,
            Duration::from_millis(120),
        )
    }

    /// Drawn at once (short work would otherwise never show), then every `tick`.
    fn drawn(
        template: &str,
        fallback: fn() -> ProgressStyle,
        message: &str,
        tick: Duration,
    ) -> Bar {
        let bar = ProgressBar::with_draw_target(None, target());
        bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| fallback()));
        bar.set_message(message.to_string());
        bar.tick();
        bar.enable_steady_tick(tick);
        Bar { bar }
    }

    pub fn shared(self) -> Arc<Bar> {
        Arc::new(self)
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn total(&self, units: u64) {
        self.bar.set_length(units);
    }

    fn advanced(&self, units: u64) {
        self.bar.inc(units);
    }
}

fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}
