//! Conversions between records and SQLite values, in both directions.
//!
//! Encoding refuses what SQLite cannot hold faithfully (non-UTF-8 paths, integers above
//! `i64::MAX`) with a typed error instead of storing something else. Decoding never panics:
//! every failure becomes [`StoreError::Corrupt`] naming the table, the row and the column.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::StoreError;

/// Timestamps are RFC 3339 in UTC with nanoseconds and a `Z`: fixed width, so text order is
/// time order, and `DateTime<Utc>` round-trips exactly.
pub(crate) fn time_text(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// A path as stored text.
pub(crate) fn path_text<'p>(field: &'static str, path: &'p Path) -> Result<&'p str, StoreError> {
    path.to_str().ok_or_else(|| StoreError::NonUtf8Path {
        field,
        path: path.to_path_buf(),
    })
}

/// An optional path as stored text.
pub(crate) fn opt_path_text<'p>(
    field: &'static str,
    path: Option<&'p Path>,
) -> Result<Option<&'p str>, StoreError> {
    path.map(|path| path_text(field, path)).transpose()
}

/// An unsigned integer as SQLite's signed 64-bit integer.
pub(crate) fn int_value(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::TooLarge { field, value })
}

/// A value as a JSON column.
pub(crate) fn json_text<T: serde::Serialize>(
    field: &'static str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { field, source })
}

/// Decodes the columns of one row, attributing every failure to that row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowDecoder<'r> {
    table: &'static str,
    id: &'r str,
}

impl<'r> RowDecoder<'r> {
    /// A decoder for row `id` of `table`.
    pub(crate) fn new(table: &'static str, id: &'r str) -> Self {
        Self { table, id }
    }

    /// The error for a bad `column`.
    pub(crate) fn corrupt(&self, column: &str, reason: impl Display) -> StoreError {
        StoreError::Corrupt {
            table: self.table,
            id: self.id.to_string(),
            reason: format!("column `{column}`: {reason}"),
        }
    }

    /// Any type with a `FromStr` (ids, names, states, addresses).
    pub(crate) fn parse<T>(&self, column: &str, text: &str) -> Result<T, StoreError>
    where
        T: FromStr,
        T::Err: Display,
    {
        text.parse()
            .map_err(|err| self.corrupt(column, format_args!("`{text}` does not parse: {err}")))
    }

    /// A VM or image name (a DNS label).
    pub(crate) fn name(&self, column: &str, text: &str) -> Result<banger_api::VmName, StoreError> {
        banger_api::VmName::parse(text).map_err(|err| self.corrupt(column, err))
    }

    /// An optional `FromStr` value.
    pub(crate) fn parse_opt<T>(
        &self,
        column: &str,
        text: Option<&str>,
    ) -> Result<Option<T>, StoreError>
    where
        T: FromStr,
        T::Err: Display,
    {
        text.map(|text| self.parse(column, text)).transpose()
    }

    /// A stored timestamp.
    pub(crate) fn time(&self, column: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
        DateTime::parse_from_rfc3339(text)
            .map(|time| time.with_timezone(&Utc))
            .map_err(|err| {
                self.corrupt(
                    column,
                    format_args!("`{text}` is not an RFC 3339 time: {err}"),
                )
            })
    }

    /// A stored integer narrowed to the record's type.
    pub(crate) fn int<T: TryFrom<i64>>(&self, column: &str, value: i64) -> Result<T, StoreError> {
        T::try_from(value).map_err(|_| {
            self.corrupt(
                column,
                format_args!("{value} is out of range for {}", std::any::type_name::<T>()),
            )
        })
    }

    /// An optional stored integer narrowed to the record's type.
    pub(crate) fn int_opt<T: TryFrom<i64>>(
        &self,
        column: &str,
        value: Option<i64>,
    ) -> Result<Option<T>, StoreError> {
        value.map(|value| self.int(column, value)).transpose()
    }

    /// A stored 0/1 flag.
    pub(crate) fn flag(&self, column: &str, value: i64) -> Result<bool, StoreError> {
        match value {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.corrupt(column, format_args!("{other} is not 0 or 1"))),
        }
    }

    /// A JSON column.
    pub(crate) fn json<T>(&self, column: &str, text: &str) -> Result<T, StoreError>
    where
        T: serde::de::DeserializeOwned,
    {
        serde_json::from_str(text)
            .map_err(|err| self.corrupt(column, format_args!("bad JSON: {err}")))
    }
}

/// An optional stored path.
pub(crate) fn opt_path(text: Option<String>) -> Option<PathBuf> {
    text.map(PathBuf::from)
}
