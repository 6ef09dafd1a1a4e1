//! Terminal tables (Markdown, so they paste into docs) and number formatting.

use std::fmt::Write;

use crate::analytic::OpKind;
use crate::measure::Measurement;
use crate::predict::{ContextRow, QuantRow, StepPrediction};

/// `x` with an SI prefix: `si(16.06e9, "B")` = "16.06 GB".
pub fn si(x: f64, unit: &str) -> String {
    let (v, p) = if x.abs() >= 1e15 {
        (x / 1e15, "P")
    } else if x.abs() >= 1e12 {
        (x / 1e12, "T")
    } else if x.abs() >= 1e9 {
        (x / 1e9, "G")
    } else if x.abs() >= 1e6 {
        (x / 1e6, "M")
    } else if x.abs() >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    let digits = if p.is_empty() && v.fract() == 0.0 {
        0
    } else if v.abs() >= 100.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {p}{unit}")
}

/// Seconds in the most readable unit.
pub fn secs(s: f64) -> String {
    if !s.is_finite() {
        "-".into()
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// "decode b4 c1024" / "prefill p512" (with a batch when it is not 1).
pub fn step_label(p: &crate::analytic::Step) -> String {
    if p.is_decode() {
        format!("decode b{} c{}", p.batch, p.past)
    } else if p.batch == 1 {
        format!("prefill p{}", p.query_len)
    } else {
        format!("prefill b{} p{}", p.batch, p.query_len)
    }
}

/// The per-op table of one step, with measured op times when given.
pub fn op_table(pred: &StepPrediction, measured: Option<&Measurement>) -> String {
    let mut s = String::new();
    let with_m = measured.is_some_and(|m| !m.ops.is_empty());
    let _ = write!(
        s,
        "| op | FLOPs | bytes | FLOP/B | compute | memory | floor | bound | share of floor |"
    );
    if with_m {
        let _ = write!(s, " measured | of floor | GB/s | GFLOP/s |");
    }
    s.push('\n');
    let _ = write!(
        s,
        "| -- | ----: | ----: | -----: | ------: | -----: | ----: | ----- | ----: |"
    );
    if with_m {
        let _ = write!(s, " ----: | ----: | ----: | ----: |");
    }
    s.push('\n');
    let m_of = |k: OpKind| {
        measured
            .and_then(|m| m.ops.iter().find(|o| o.kind == k))
            .map(|o| o.seconds)
    };
    for o in &pred.ops {
        let c = &o.cost;
        let _ = write!(
            s,
            "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {:.1}% |",
            c.kind.name(),
            si(c.flops, ""),
            si(c.bytes(), "B"),
            c.intensity(),
            secs(o.compute_s),
            secs(o.memory_s),
            secs(o.floor_s),
            o.bound.name(),
            100.0 * o.floor_s / pred.floor_s
        );
        if with_m {
            match m_of(c.kind) {
                Some(t) => {
                    let _ = write!(
                        s,
                        " {} | {:.0}% | {:.1} | {:.1} |",
                        secs(t),
                        100.0 * o.floor_s / t,
                        c.bytes() / t / 1e9,
                        c.flops / t / 1e9
                    );
                }
                None => s.push_str(" - | - | - | - |"),
            }
        }
        s.push('\n');
    }
    let _ = write!(
        s,
        "| **step** | {} | {} | {:.2} | {} | {} | {} | {} | 100% |",
        si(pred.flops, ""),
        si(pred.bytes, "B"),
        pred.intensity(),
        secs(pred.compute_s),
        secs(pred.memory_s),
        secs(pred.floor_s),
        pred.bound.name()
    );
    let from_cache = pred.ops.iter().any(|o| {
        m_of(o.cost.kind).is_some_and(|t| t < o.floor_s && o.bound == crate::predict::Bound::Memory)
    });
    if let (true, Some(m)) = (with_m, measured) {
        let total = m.ops_total_s.unwrap_or(f64::NAN);
        let _ = write!(
            s,
            " {} (forward {}) | {:.0}% | {:.1} | {:.1} |",
            secs(total),
            secs(m.forward_s),
            100.0 * pred.floor_s / m.forward_s,
            pred.bytes / m.forward_s / 1e9,
            pred.flops / m.forward_s / 1e9
        );
    }
    s.push('\n');
    if from_cache {
        s.push_str(
            "\nOps above 100% of their floor found their data in cache: the floor counts every byte from main memory.\n",
        );
    }
    s
}

/// Floors and ceilings of every step of the grid, with measurements when given.
pub fn steps_table(preds: &[StepPrediction], measured: &[Measurement]) -> String {
    let mut s = String::new();
    let with_m = !measured.is_empty();
    let with_e = measured.iter().any(|m| m.engine_step_s.is_some());
    s.push_str("| step | FLOP/B | floor | bound | tokens/s ceiling |");
    if with_m {
        s.push_str(" measured | of floor | tokens/s | GB/s | GFLOP/s |");
    }
    if with_e {
        s.push_str(" engine step | engine of floor |");
    }
    s.push('\n');
    s.push_str("| ---- | -----: | ----: | ----- | ---------------: |");
    if with_m {
        s.push_str(" ----: | ----: | ----: | ----: | ----: |");
    }
    if with_e {
        s.push_str(" ----: | ----: |");
    }
    s.push('\n');
    for p in preds {
        let _ = write!(
            s,
            "| {} | {:.2} | {} | {} | {:.1} |",
            step_label(&p.step),
            p.intensity(),
            secs(p.floor_s),
            p.bound.name(),
            p.tokens_per_s
        );
        let m = measured.iter().find(|m| m.step == p.step);
        if with_m {
            match m {
                Some(m) => {
                    let _ = write!(
                        s,
                        " {} | {:.0}% | {:.1} | {:.1} | {:.1} |",
                        secs(m.forward_s),
                        100.0 * p.floor_s / m.forward_s,
                        p.step.tokens() as f64 / m.forward_s,
                        p.bytes / m.forward_s / 1e9,
                        p.flops / m.forward_s / 1e9
                    );
                }
                None => s.push_str(" - | - | - | - | - |"),
            }
        }
        if with_e {
            match m.and_then(|m| m.engine_step_s) {
                Some(e) => {
                    let _ = write!(s, " {} | {:.0}% |", secs(e), 100.0 * p.floor_s / e);
                }
                None => s.push_str(" - | - |"),
            }
        }
        s.push('\n');
    }
    s
}

pub fn context_table(rows: &[ContextRow]) -> String {
    let mut s = String::new();
    let b = rows.first().map(|r| r.batch).unwrap_or(1);
    let _ = writeln!(
        s,
        "| context | decode floor b1 | tokens/s b1 | decode floor b{b} | tokens/s b{b} | KV share of bytes b{b} | compute-bound from batch |"
    );
    s.push_str("| ------: | ----: | ----: | ----: | ----: | ----: | ----: |\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {} | {:.1} | {:.0}% | {} |",
            r.context,
            secs(r.floor_s_b1),
            r.tokens_per_s_b1,
            secs(r.floor_s),
            r.tokens_per_s,
            100.0 * r.kv_share,
            r.ridge_batch
                .map(|b| b.to_string())
                .unwrap_or_else(|| "never".into())
        );
    }
    s
}

pub fn quant_table(rows: &[QuantRow], batch: usize, context: usize, prompt: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| weights | KV | weights GB | KV bytes/token | decode tok/s b1 c{context} | decode tok/s b{batch} c{context} | prefill tok/s p{prompt} | compute-bound from batch (c{context}) |"
    );
    s.push_str("| ------- | -- | ----: | ----: | ----: | ----: | ----: | ----: |\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {} | {:.1} | {:.1} | {:.1} | {} |",
            r.weights,
            r.kv,
            r.weight_gb,
            si(r.kv_bytes_per_token, "B"),
            r.decode_tokens_per_s_b1,
            r.decode_tokens_per_s,
            r.prefill_tokens_per_s,
            r.ridge_batch
                .map(|b| b.to_string())
                .unwrap_or_else(|| "never".into())
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_readably() {
        assert_eq!(si(16.06e9, "B"), "16.06 GB");
        assert_eq!(si(15.01e9, ""), "15.01 G");
        assert_eq!(si(512.0, "B"), "512 B");
        assert_eq!(si(46_080.0, "B"), "46.08 kB");
        assert_eq!(si(134.5e6, ""), "134.5 M");
        assert_eq!(secs(0.003_62), "3.62 ms");
        assert_eq!(secs(812e-6), "812.0 µs");
        assert_eq!(secs(2.5), "2.50 s");
        assert_eq!(
            step_label(&crate::analytic::Step::decode(4, 1024)),
            "decode b4 c1024"
        );
        assert_eq!(
            step_label(&crate::analytic::Step::prefill(1, 512)),
            "prefill p512"
        );
    }
}
