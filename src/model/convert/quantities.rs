//! Kubernetes quantities (cpu and bytes) as exact integers.

/// A Kubernetes quantity as an exact decimal: `mantissa / 10^scale`, times
/// `10^pow10` and `1024^pow1024`.
struct ParsedQuantity {
    negative: bool,
    mantissa: u128,
    scale: u32,
    pow10: i32,
    pow1024: u32,
}

fn parse_quantity(q: &str) -> Result<ParsedQuantity, String> {
    let invalid = || format!("invalid quantity {q:?}");
    let (negative, rest) = match q.as_bytes().first() {
        Some(b'+') => (false, &q[1..]),
        Some(b'-') => (true, &q[1..]),
        _ => (false, q),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(invalid());
    }
    let too_large = || format!("quantity {q:?} is too large");
    let mut mantissa: u128 = 0;
    for digit in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(digit - b'0')))
            .ok_or_else(too_large)?;
    }
    let scale = u32::try_from(frac_part.len()).map_err(|_| invalid())?;
    let (pow10, pow1024) = match suffix {
        "" => (0, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        s if s.len() > 1 && (s.starts_with('e') || s.starts_with('E')) => {
            let exponent = &s[1..];
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let exponent: i32 = exponent.parse().map_err(|_| invalid())?;
            (exponent, 0)
        }
        _ => return Err(invalid()),
    };
    Ok(ParsedQuantity {
        negative,
        mantissa,
        scale,
        pow10,
        pow1024,
    })
}

/// `q × factor` as an integer; a fraction is rounded up, or an error unless `round_up`.
fn quantity_units(q: &str, factor: u128, round_up: bool) -> Result<u64, String> {
    let p = parse_quantity(q)?;
    let too_large = || format!("quantity {q:?} is too large");
    let fractional = || format!("fractional byte value {q:?} is invalid, must be an integer");
    if p.mantissa == 0 {
        return Ok(0);
    }
    if p.negative {
        return Err(format!("quantity {q:?} must not be negative"));
    }
    let mut num_exp = p.pow10.max(0).unsigned_abs();
    let mut den_exp = p.pow10.min(0).unsigned_abs().saturating_add(p.scale);
    let common = num_exp.min(den_exp);
    num_exp -= common;
    den_exp -= common;
    let numerator = 10u128
        .checked_pow(num_exp)
        .and_then(|n| n.checked_mul(1024u128.checked_pow(p.pow1024)?))
        .and_then(|n| n.checked_mul(p.mantissa))
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(too_large)?;
    let Some(denominator) = 10u128.checked_pow(den_exp) else {
        // Smaller than any unit: the numerator fits in u128, the denominator does not.
        return if round_up { Ok(1) } else { Err(fractional()) };
    };
    let mut units = numerator / denominator;
    if numerator % denominator != 0 {
        if !round_up {
            return Err(fractional());
        }
        units += 1;
    }
    // Kubernetes caps quantities at 2^63-1.
    u64::try_from(units)
        .ok()
        .filter(|&u| i64::try_from(u).is_ok())
        .ok_or_else(too_large)
}

/// Parses a Kubernetes cpu quantity into millicores (`"500m"` → 500,
/// `"0.25"` → 250, `"2"` → 2000). Values below a millicore round up, as in Kubernetes.
pub fn cpu_millis(q: &str) -> Result<u64, String> {
    quantity_units(q, 1000, true)
}

/// Parses a Kubernetes memory or storage quantity into bytes (`"128Mi"`,
/// `"1G"`, `"1e3"`, `"1.5Gi"`). A fraction of a byte (`"100m"`) is an error.
pub fn bytes(q: &str) -> Result<u64, String> {
    quantity_units(q, 1, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        let ok = [
            ("500m", 500),
            ("1", 1000),
            ("0.25", 250),
            ("2k", 2_000_000),
            ("1.5", 1500),
            (".5", 500),
            ("5.", 5000),
            ("+2", 2000),
            ("0.1m", 1),
            ("0.0001", 1),
            ("0", 0),
            ("-0", 0),
            ("1e3", 1_000_000),
            ("100e-3", 100),
            ("1E-3", 1),
            ("1Ki", 1_024_000),
        ];
        for (q, expected) in ok {
            assert_eq!(cpu_millis(q), Ok(expected), "{q}");
        }
        let err = [
            ("", "invalid quantity \"\""),
            ("abc", "invalid quantity \"abc\""),
            ("1 ", "invalid quantity \"1 \""),
            ("1.2.3", "invalid quantity \"1.2.3\""),
            (".", "invalid quantity \".\""),
            ("1e", "invalid quantity \"1e\""),
            ("1ki", "invalid quantity \"1ki\""),
            ("1mi", "invalid quantity \"1mi\""),
            ("-1", "quantity \"-1\" must not be negative"),
            ("10E", "quantity \"10E\" is too large"),
            ("1e400", "quantity \"1e400\" is too large"),
        ];
        for (q, expected) in err {
            assert_eq!(cpu_millis(q), Err(expected.to_owned()), "{q}");
        }
    }

    #[test]
    fn byte_quantities() {
        let ok = [
            ("128Mi", 128 << 20),
            ("1G", 1_000_000_000),
            ("1e3", 1000),
            ("100", 100),
            ("1.5Gi", 3 << 29),
            ("512k", 512_000),
            ("1Ki", 1024),
            ("2Ti", 2 << 40),
            ("1E", 1_000_000_000_000_000_000),
            ("7Ei", 7 << 60),
            ("0.5Ki", 512),
            ("1000m", 1),
            ("0", 0),
        ];
        for (q, expected) in ok {
            assert_eq!(bytes(q), Ok(expected), "{q}");
        }
        let err = [
            (
                "100m",
                "fractional byte value \"100m\" is invalid, must be an integer",
            ),
            (
                "0.5",
                "fractional byte value \"0.5\" is invalid, must be an integer",
            ),
            (
                "1e-50",
                "fractional byte value \"1e-50\" is invalid, must be an integer",
            ),
            ("8Ei", "quantity \"8Ei\" is too large"),
            ("-1Mi", "quantity \"-1Mi\" must not be negative"),
            ("1MB", "invalid quantity \"1MB\""),
            ("Mi", "invalid quantity \"Mi\""),
        ];
        for (q, expected) in err {
            assert_eq!(bytes(q), Err(expected.to_owned()), "{q}");
        }
    }
}
