//! frp's bandwidth quantities ("10MB", "1024KB"), shared by the slowpath
//! (tenant records) and the fastpath (a proxy's own `bandwidthLimit`).

/// Bytes in frp's "KB" (frp's BandwidthQuantity counts in powers of 1024).
pub const KB: u64 = 1024;
/// Bytes in frp's "MB".
pub const MB: u64 = 1024 * 1024;

/// Parse a frp bandwidth quantity: a decimal number followed by `MB` or
/// `KB` (powers of 1024, as frp's BandwidthQuantity); empty = 0.
pub fn parse_bandwidth(field: &str, text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(0);
    }
    let (num, unit) = if let Some(n) = t.strip_suffix("MB") {
        (n, MB)
    } else if let Some(n) = t.strip_suffix("KB") {
        (n, KB)
    } else {
        return Err(format!(
            "{field}: {text:?} needs a unit, MB or KB (e.g. \"10MB\", \"1024KB\")"
        ));
    };
    let f: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{field}: {text:?} is not a number followed by MB or KB"))?;
    if !f.is_finite() || f < 0.0 {
        return Err(format!("{field}: {text:?} must be a positive amount"));
    }
    Ok((f * unit as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_frp() {
        assert_eq!(parse_bandwidth("b", "1024KB").unwrap(), MB);
        assert_eq!(parse_bandwidth("b", "10MB").unwrap(), 10 * MB);
        assert_eq!(parse_bandwidth("b", "1.5MB").unwrap(), 3 * MB / 2);
        assert_eq!(parse_bandwidth("b", "").unwrap(), 0);
        assert!(parse_bandwidth("b", "10mb")
            .unwrap_err()
            .contains("MB or KB"));
        assert!(parse_bandwidth("b", "10GB").is_err());
        assert!(parse_bandwidth("b", "xMB").is_err());
        assert!(parse_bandwidth("b", "-1MB").is_err());
    }
}
