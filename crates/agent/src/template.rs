//! `{{name}}` templates in agent text.

use domain::call::Parameter;

/// `{{name}}` replaced by the call parameter of that name; a missing one renders empty (and is
/// logged). Parameter values are inserted as text and never rendered again, so a value holding
/// `{{x}}` stays literal.
pub fn render(template: &str, parameters: &[Parameter]) -> String {
    let (out, missing) = domain::template::render_call(template, parameters, None);
    for parameter in missing {
        tracing::warn!(
            %parameter,
            "template names a parameter the call does not have"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, value: &str) -> Parameter {
        Parameter {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn parameters_render_as_text_and_missing_ones_are_empty() {
        let ps = vec![p("customer_name", "Rahul {{x}}"), p("invoice_id", "INV-7")];
        assert_eq!(
            render("Hello {{customer_name}}, about {{ invoice_id }}.", &ps),
            "Hello Rahul {{x}}, about INV-7."
        );
        assert_eq!(render("Hi {{missing}}!", &ps), "Hi !");
        assert_eq!(
            render("broken {{customer_name", &ps),
            "broken {{customer_name"
        );
        assert_eq!(render("", &ps), "");
        assert_eq!(render("no templates", &ps), "no templates");
    }
}
