//! `{{name}}` templates in agent text.

/// `{{name}}` replaced by `lookup(name)`; a name without a value renders empty and is returned
/// among the missing ones (the caller logs them). Values are inserted as text and never
/// rendered again, so a value holding `{{x}}` stays literal.
pub fn render<F>(template: &str, lookup: F) -> (String, Vec<String>)
where
    F: Fn(&str) -> Option<String>,
{
    let mut out = String::with_capacity(template.len());
    let mut missing = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return (out, missing);
        };
        let name = after[..close].trim();
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => missing.push(name.to_string()),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    (out, missing)
}

/// [`render`] with a call's parameters, then (for names no parameter has) the data an earlier
/// attempt collected; a collected value that is not a string is inserted as its JSON text.
pub fn render_call(
    template: &str,
    parameters: &[crate::call::Parameter],
    collected: Option<&serde_json::Map<String, serde_json::Value>>,
) -> (String, Vec<String>) {
    render(template, |name| {
        if let Some(p) = parameters.iter().find(|p| p.name == name) {
            return Some(p.value.clone());
        }
        collected.and_then(|c| c.get(name)).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    })
}
