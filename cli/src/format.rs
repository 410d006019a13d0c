//! What every subcommand shares: sizes and budgets parsed from the command
//! line, sizes and speeds shown, models opened, progress bars drawn.

use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use layerpager::{Error, Pager, PagerOptions, TensorIndex};

/// Parses 123, 512K, 512M, 4G, 1.5T (binary units) or N% of `whole`.
pub(crate) fn parse_size(text: &str, whole: u64, flag: &str) -> Result<u64, Error> {
    let bad = || Error::InvalidArgument(format!("{flag} '{text}': expected bytes, 512M, 4G or 40%"));
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(0.0..=1000.0).contains(&p) {
            return Err(bad());
        }
        return Ok((whole as f64 * p / 100.0) as u64);
    }
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(bad()),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if n < 0.0 {
        return Err(bad());
    }
    Ok((n * mult as f64) as u64)
}

pub(crate) fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

pub(crate) fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

pub(crate) fn open_index(path: &Path) -> Result<TensorIndex, Error> {
    Ok(open_pager(path, PagerOptions::default())?.index().clone())
}

pub(crate) fn open_pager(path: &Path, options: PagerOptions) -> Result<Pager, Error> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if is_safetensors {
        Pager::open_safetensors(path, options)
    } else {
        Pager::open_gguf(path, options)
    }
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:<42} [{bar:30}] {percent:>3}% {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Budgets from "10%..100%" (step 10%), "5%..50%/5%" or a list "25%,4G".
pub(crate) fn parse_budgets(text: &str, model: u64) -> Result<Vec<u64>, Error> {
    let bad = || {
        Error::InvalidArgument(format!(
            "--budgets '{text}': expected 10%..100%, 10%..90%/20% or 25%,50%,4G"
        ))
    };
    if let Some((from, rest)) = text.split_once("..") {
        let (to, step) = rest.split_once('/').unwrap_or((rest, "10%"));
        let (from, to, step) = (
            parse_size(from, model, "--budgets")?,
            parse_size(to, model, "--budgets")?,
            parse_size(step, model, "--budgets")?,
        );
        if step == 0 || from > to || (to - from) / step > 1000 {
            return Err(bad());
        }
        let count = (to - from) / step;
        // The last budget is exactly `to` (whole-percent steps round down).
        let mut out: Vec<u64> = (0..=count).map(|i| from + i * step).collect();
        if to - out[out.len() - 1] < step / 2 {
            *out.last_mut().expect("at least one") = to;
        } else {
            out.push(to);
        }
        return Ok(out);
    }
    text.split(',')
        .map(|b| parse_size(b, model, "--budgets"))
        .collect()
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
