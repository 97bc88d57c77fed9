//! The id types as SQLite values (stored as INTEGER).

use rusqlite::ToSql;
use rusqlite::types::{FromSql, FromSqlResult, ToSqlOutput, ValueRef};

use crate::store::{DeliveryId, EventSeq, SubscriptionId};

macro_rules! integer_column {
    ($name:ident) => {
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl From<$name> for rusqlite::types::Value {
            fn from(id: $name) -> Self {
                rusqlite::types::Value::Integer(id.0)
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                i64::column_result(value).map($name)
            }
        }
    };
}

integer_column!(EventSeq);
integer_column!(DeliveryId);
integer_column!(SubscriptionId);
