//! The id types as PostgreSQL values (stored as BIGINT).

use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::store::{DeliveryId, EventSeq, SubscriptionId};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

macro_rules! bigint_column {
    ($name:ident) => {
        impl ToSql for $name {
            fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
                self.0.to_sql(ty, out)
            }

            fn accepts(ty: &Type) -> bool {
                <i64 as ToSql>::accepts(ty)
            }

            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $name {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
                i64::from_sql(ty, raw).map($name)
            }

            fn accepts(ty: &Type) -> bool {
                <i64 as FromSql>::accepts(ty)
            }
        }
    };
}

bigint_column!(EventSeq);
bigint_column!(DeliveryId);
bigint_column!(SubscriptionId);
