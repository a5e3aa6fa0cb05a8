//! Reading a number from the configuration.

/// `v`, which must be positive when given, else `default`; the error names `key`.
pub(super) fn positive<T: PartialOrd + Default + Copy>(
    v: Option<T>,
    default: T,
    key: &str,
) -> Result<T, String> {
    match v {
        Some(v) if v <= T::default() => Err(format!("{key}: expected a positive number")),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}
