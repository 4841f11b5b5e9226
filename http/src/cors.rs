//! Cross-origin requests, as Azure's inference server allows them with `AML_CORS_ORIGINS`:
//! the listed origins (or `*`) may call with GET and POST, any request header, and a browser's
//! preflight `OPTIONS` is answered without credentials (it never carries any).

use actix_cors::Cors;
use actix_web::middleware::Condition;

/// The origins from a comma-separated list (`AML_CORS_ORIGINS`' form), blanks dropped.
pub fn origins(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect()
}

/// The middleware for `origins`; with none, cross-origin requests get no CORS headers at all
/// (browsers then refuse them), as on Azure without the variable.
pub fn middleware(origins: &[String]) -> Condition<Cors> {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST"])
        .allow_any_header()
        .expose_any_header()
        .max_age(3600);
    if origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin();
    } else {
        for origin in origins {
            cors = cors.allowed_origin(origin);
        }
    }
    Condition::new(!origins.is_empty(), cors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_and_trimmed() {
        assert_eq!(
            origins(" https://a.example , https://b.example,,"),
            ["https://a.example", "https://b.example"]
        );
        assert!(origins("").is_empty());
    }
}
