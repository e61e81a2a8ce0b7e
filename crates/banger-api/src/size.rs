//! Human sizes (`512M`, `2G`, `1.5GiB`) as the CLI and forms accept them.

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Nothing or an unparseable number.
    #[error("`{0}` is not a size: use a number with an optional unit, e.g. 512M, 2G, 10GiB")]
    Malformed(String),
    /// A unit that is not K, M, G or T.
    #[error("`{0}` has an unknown unit: use K, M, G or T (powers of 1024)")]
    UnknownUnit(String),
    /// Smaller than one MiB or too large to represent.
    #[error("`{0}` is out of range: sizes are whole MiB between 1 MiB and 1 PiB")]
    OutOfRange(String),
}

/// Parses a human size into MiB. A bare number means MiB. Units are powers of 1024 and may be
/// written `G`, `GB`, `GiB` (any case).
pub fn parse_size_mib(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(SizeError::Malformed(input.to_string()));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| SizeError::Malformed(input.to_string()))?;
    let unit = unit.trim().to_ascii_lowercase();
    let factor_mib: f64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "k" => 1.0 / 1024.0,
        "" | "m" => 1.0,
        "g" => 1024.0,
        "t" => 1024.0 * 1024.0,
        _ => return Err(SizeError::UnknownUnit(input.to_string())),
    };
    let mib = value * factor_mib;
    if !mib.is_finite() || mib < 1.0 || mib > (1u64 << 30) as f64 || mib.fract() != 0.0 {
        return Err(SizeError::OutOfRange(input.to_string()));
    }
    Ok(mib as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_as_powers_of_1024() {
        assert_eq!(parse_size_mib("512"), Ok(512));
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("2G"), Ok(2048));
        assert_eq!(parse_size_mib("2GiB"), Ok(2048));
        assert_eq!(parse_size_mib("1.5g"), Ok(1536));
        assert_eq!(parse_size_mib("1T"), Ok(1024 * 1024));
        assert_eq!(parse_size_mib("2048K"), Ok(2));
    }

    #[test]
    fn rejects_garbage_fractions_and_zero() {
        assert!(matches!(parse_size_mib(""), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size_mib("G"), Err(SizeError::Malformed(_))));
        assert!(matches!(
            parse_size_mib("12X"),
            Err(SizeError::UnknownUnit(_))
        ));
        assert!(matches!(parse_size_mib("0"), Err(SizeError::OutOfRange(_))));
        assert!(matches!(
            parse_size_mib("1K"),
            Err(SizeError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_size_mib("1.0001M"),
            Err(SizeError::OutOfRange(_))
        ));
    }
}
