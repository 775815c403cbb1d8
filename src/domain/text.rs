//! Text a client sends that reaches a database (customer ids, SKUs, names, reasons): one rule
//! per field, checked once at the edge, and the field's OpenAPI schema built from that same
//! rule, so the document says exactly what is refused.
//!
//! Lengths count characters (Unicode scalar values), as JSON Schema's `maxLength` does; every
//! such column is TEXT on both stores, so any length in bytes fits. Control characters
//! (U+0000–U+001F, U+007F–U+009F) are refused: PostgreSQL's text cannot hold U+0000 at all,
//! and none of them belongs in an id, a name or a log line.

use std::borrow::Cow;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, SchemaType, Type};

/// No control character anywhere (Rust's `char::is_control`, general category Cc).
pub const NO_CONTROL_PATTERN: &str = r"^[^\x00-\x1F\x7F-\x9F]*$";
/// No control character, and at least one character that is not white space (Rust's
/// `char::is_whitespace`, spelled out: `\s` means different sets in different regex dialects).
pub const NON_BLANK_PATTERN: &str = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$";

/// The rule for one stored text field.
#[derive(Debug, Clone, Copy)]
pub struct TextRule {
    /// The field's name in the request, for messages.
    pub field: &'static str,
    /// Most characters (not bytes).
    pub max_chars: usize,
    /// At least one character that is not white space (so also not empty).
    pub non_blank: bool,
}

pub const CUSTOMER_ID: TextRule = TextRule {
    field: "customer_id",
    max_chars: 128,
    non_blank: true,
};
pub const STOCK_NAME: TextRule = TextRule {
    field: "name",
    max_chars: 200,
    non_blank: true,
};
pub const OVERRIDE_REASON: TextRule = TextRule {
    field: "reason",
    max_chars: 500,
    non_blank: false,
};

impl TextRule {
    /// `Err` with one message naming the field when `value` breaks the rule.
    pub fn check(&self, value: &str) -> Result<(), String> {
        let TextRule {
            field, max_chars, ..
        } = *self;
        if value.chars().any(char::is_control) {
            return Err(format!("{field} must not contain control characters"));
        }
        let chars = value.chars().count();
        if self.non_blank && value.trim().is_empty() {
            return Err(format!(
                "{field} must be 1-{max_chars} characters, not only white space"
            ));
        }
        if chars > max_chars {
            return Err(format!(
                "{field} must be at most {max_chars} characters, got {chars}"
            ));
        }
        Ok(())
    }

    /// The field's JSON Schema: exactly what [`TextRule::check`] accepts (and `null`, for an
    /// optional field, when `nullable`).
    pub fn schema(&self, description: &str, example: &str, nullable: bool) -> Object {
        let types = if nullable {
            SchemaType::from_iter([Type::String, Type::Null])
        } else {
            SchemaType::Type(Type::String)
        };
        ObjectBuilder::new()
            .schema_type(types)
            .description(Some(description))
            .min_length(self.non_blank.then_some(1))
            .max_length(Some(self.max_chars))
            .pattern(Some(if self.non_blank {
                NON_BLANK_PATTERN
            } else {
                NO_CONTROL_PATTERN
            }))
            .examples([example])
            .build()
    }
}

/// Most characters in a SKU.
pub const MAX_SKU_CHARS: usize = 64;
/// A SKU: ASCII letters, digits, `-`, `_` and `.`, starting with a letter or digit (so `.`
/// and `..` are not SKUs: they would be dot segments in `/api/inventory/{sku}`).
pub const SKU_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]*$";
/// The message for a SKU that breaks the rule.
pub const SKU_RULE: &str =
    "1-64 ASCII letters, digits, '-', '_' or '.', starting with a letter or digit";

pub fn valid_sku(sku: &str) -> bool {
    let bytes = sku.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.len() <= MAX_SKU_CHARS
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The schema of a SKU, in a body or in the path.
pub fn sku_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(format!("The SKU: {SKU_RULE}")))
        .min_length(Some(1))
        .max_length(Some(MAX_SKU_CHARS))
        .pattern(Some(SKU_PATTERN))
        .examples(["KB-001"])
        .build()
}

/// The SKU's schema as a named component (`Sku`), for `value_type = SkuSchema` in bodies and
/// `("sku" = SkuSchema, Path)` in paths.
pub struct SkuSchema;

impl utoipa::PartialSchema for SkuSchema {
    fn schema() -> RefOr<Schema> {
        sku_schema().into()
    }
}

impl utoipa::ToSchema for SkuSchema {
    fn name() -> Cow<'static, str> {
        "Sku".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    /// Values on both sides of every rule's edges.
    fn samples() -> Vec<String> {
        let mut samples: Vec<String> = [
            "",
            " ",
            "  \u{3000}",
            "a",
            " a ",
            "é",
            "\u{A0}",
            "\u{85}",
            "\u{FEFF}",
            "\u{200B}",
            "\u{1680}x",
            "a\u{0}b",
            "a\nb",
            "a\tb",
            "\u{7F}",
            "\u{9F}z",
            "\u{A0}z",
            "KB-001",
            "kb.001",
            ".",
            "..",
            "-x",
            "_x",
            "x-",
            "a b",
            "a/b",
            "ключ",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for n in [63, 64, 65, 127, 128, 129, 199, 200, 201, 499, 500, 501] {
            samples.push("é".repeat(n));
            samples.push("k".repeat(n));
            samples.push(format!(" {}", "x".repeat(n - 1)));
        }
        samples
    }

    fn schema_accepts(schema: &Object, value: &str) -> bool {
        let chars = value.chars().count();
        schema.min_length.is_none_or(|min| chars >= min)
            && schema.max_length.is_none_or(|max| chars <= max)
            && schema.pattern.as_deref().is_none_or(|p| {
                Regex::new(p)
                    .unwrap_or_else(|e| panic!("{p}: {e}"))
                    .is_match(value)
            })
    }

    #[test]
    fn each_text_rule_accepts_exactly_what_its_schema_accepts() {
        for rule in [CUSTOMER_ID, STOCK_NAME, OVERRIDE_REASON] {
            let schema = rule.schema("", "x", false);
            for value in samples() {
                assert_eq!(
                    rule.check(&value).is_ok(),
                    schema_accepts(&schema, &value),
                    "{} {value:?}",
                    rule.field
                );
            }
        }
    }

    #[test]
    fn the_sku_rule_accepts_exactly_what_its_schema_accepts() {
        let schema = sku_schema();
        for value in samples() {
            assert_eq!(
                valid_sku(&value),
                schema_accepts(&schema, &value),
                "{value:?}"
            );
        }
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        assert!(CUSTOMER_ID.check(&"é".repeat(128)).is_ok());
        assert!(CUSTOMER_ID.check(&"é".repeat(129)).is_err());
        assert!(OVERRIDE_REASON.check(&"日".repeat(500)).is_ok());
        assert!(STOCK_NAME.check(&"é".repeat(200)).is_ok());
    }
}
