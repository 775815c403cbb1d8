//! The order request, validated once at the edge: after [`OrderRequest::validate`] every
//! line has a well-formed SKU and a sane quantity, so nothing downstream re-checks.

use crate::domain::text::{CUSTOMER_ID, SKU_RULE, SkuSchema, valid_sku};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ArrayBuilder, Object, ObjectBuilder, Ref, Type};

/// Most lines one order may have.
pub const MAX_LINES: usize = 50;
/// Most units of one SKU in one order.
pub const MAX_QUANTITY: i64 = 1_000;
/// Currencies the catalogue is priced in.
pub const SUPPORTED_CURRENCIES: &[&str] = &["USD"];

/// Body of `POST /api/orders`. Prices are never taken from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    #[schema(schema_with = customer_id_schema)]
    pub customer_id: String,
    #[schema(schema_with = items_schema)]
    pub items: Vec<OrderRequestItem>,
    #[schema(schema_with = currency_schema)]
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequestItem {
    #[schema(value_type = SkuSchema)]
    pub sku: String,
    // Signed so that a negative quantity gets a clear message instead of a type error.
    #[serde(deserialize_with = "crate::domain::integral::deserialize")]
    #[schema(schema_with = quantity_schema)]
    pub quantity: i64,
}

fn customer_id_schema() -> Object {
    CUSTOMER_ID.schema(
        "Who orders: not only white space, no control characters; stored without leading \
         and trailing white space",
        "customer-1",
        false,
    )
}

fn items_schema() -> utoipa::openapi::schema::Array {
    ArrayBuilder::new()
        .items(Ref::from_schema_name("OrderRequestItem"))
        .description(Some("Order lines; each SKU at most once"))
        .min_items(Some(1))
        .max_items(Some(MAX_LINES))
        .build()
}

fn currency_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("The catalogue's currency"))
        .enum_values(Some(SUPPORTED_CURRENCIES.iter().copied()))
        .build()
}

fn quantity_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64,
        )))
        .description(Some("Units of this SKU"))
        .minimum(Some(1))
        .maximum(Some(MAX_QUANTITY))
        .examples([2])
        .build()
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOrder {
    pub customer_id: String,
    pub currency: String,
    /// (sku, quantity), in request order, SKUs unique.
    pub items: Vec<(String, i64)>,
}

impl OrderRequest {
    /// Every problem found, one message each (so a client fixes them all at once).
    pub fn validate(&self) -> Result<ValidOrder, Vec<String>> {
        let mut problems = Vec::new();
        if let Err(problem) = CUSTOMER_ID.check(&self.customer_id) {
            problems.push(problem);
        }
        if !SUPPORTED_CURRENCIES.contains(&self.currency.as_str()) {
            problems.push(format!(
                "currency {:?} is not supported (supported: {})",
                self.currency,
                SUPPORTED_CURRENCIES.join(", ")
            ));
        }
        if self.items.is_empty() {
            problems.push("items must contain at least one line".to_owned());
        }
        if self.items.len() > MAX_LINES {
            problems.push(format!("items must contain at most {MAX_LINES} lines"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, item) in self.items.iter().enumerate() {
            if !valid_sku(&item.sku) {
                problems.push(format!("items[{i}].sku must be {SKU_RULE}"));
            } else if !seen.insert(item.sku.as_str()) {
                problems.push(format!(
                    "items[{i}].sku {} appears more than once; put the total quantity on one line",
                    item.sku
                ));
            }
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                problems.push(format!(
                    "items[{i}].quantity must be between 1 and {MAX_QUANTITY}, got {}",
                    item.quantity
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ValidOrder {
            customer_id: self.customer_id.trim().to_owned(),
            currency: self.currency.clone(),
            items: self
                .items
                .iter()
                .map(|i| (i.sku.clone(), i.quantity))
                .collect(),
        })
    }
}

/// Sum of quantity × unit price; `None` if it overflows.
pub fn total_cents(lines: impl IntoIterator<Item = (i64, i64)>) -> Option<i64> {
    lines.into_iter().try_fold(0i64, |acc, (qty, price)| {
        acc.checked_add(qty.checked_mul(price)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(items: Vec<(&str, i64)>) -> OrderRequest {
        OrderRequest {
            customer_id: "c-1".into(),
            currency: "USD".into(),
            items: items
                .into_iter()
                .map(|(sku, quantity)| OrderRequestItem {
                    sku: sku.into(),
                    quantity,
                })
                .collect(),
        }
    }

    #[test]
    fn a_well_formed_request_is_valid() {
        let valid = request(vec![("KB-001", 2)]).validate().expect("valid");
        assert_eq!(valid.items, vec![("KB-001".to_owned(), 2)]);
    }

    #[test]
    fn zero_negative_and_huge_quantities_are_refused() {
        for q in [0, -1, MAX_QUANTITY + 1] {
            let problems = request(vec![("KB-001", q)])
                .validate()
                .expect_err("invalid");
            assert!(problems[0].contains("quantity"), "{problems:?}");
        }
    }

    #[test]
    fn empty_and_oversized_item_lists_are_refused() {
        assert!(request(vec![]).validate().is_err());
        let many: Vec<String> = (0..=MAX_LINES).map(|i| format!("SKU-{i}")).collect();
        let items = many.iter().map(|s| (s.as_str(), 1)).collect();
        assert!(request(items).validate().is_err());
    }

    #[test]
    fn duplicate_skus_and_bad_currency_are_each_reported() {
        let mut r = request(vec![("A", 1), ("A", 2)]);
        r.currency = "XXX".into();
        let problems = r.validate().expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn totals_that_overflow_are_none() {
        assert_eq!(total_cents([(2, 5), (1, 3)]), Some(13));
        assert_eq!(total_cents([(1000, i64::MAX / 10)]), None);
    }
}
