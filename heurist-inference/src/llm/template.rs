//! Chat templates: a model's own Jinja template (from GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json`) rendered with minijinja the way Hugging Face's
//! `apply_chat_template` renders it with Jinja2.
//!
//! What "the way Hugging Face renders it" takes, beyond minijinja's defaults:
//! - `trim_blocks` and `lstrip_blocks` on, `loopcontrols` (`break`, `continue`) available;
//! - Python string and dict methods (`.strip()`, `.startswith()`, `.items()` …) via
//!   minijinja-contrib's pycompat;
//! - `raise_exception(msg)`, which templates call to reject a conversation (it becomes
//!   [`InferenceError::Template`]);
//! - `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False)`, so `", "` and
//!   `": "` separators and no HTML escaping (minijinja's own `tojson` escapes `<`, `>`, `&`, `'`
//!   for HTML, which would change tool schemas in the prompt);
//! - the variables `messages`, `tools` (none without tools), `add_generation_prompt`,
//!   `bos_token`, `eos_token`; a message carries `tool_calls`, `tool_call_id` and `name` only
//!   when it has them, so `message.tool_calls is defined` tells calls from answers;
//! - a model may name a second template, `tool_use` (Hermes 2 Pro does), which is rendered
//!   instead of the default whenever a request passes `tools`, as transformers picks it.

use std::io;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::error::{InferenceError, Result};
use crate::llm::request::ChatMessage;

const TEMPLATE_NAME: &str = "chat_template";
const TOOL_USE_NAME: &str = "tool_use";

/// A compiled chat template with the special-token spellings it may use.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    has_tool_use: bool,
}

impl ChatTemplate {
    /// Compiles `source` (a Jinja chat template); `bos_token` and `eos_token` are the strings
    /// the template sees under those names.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(template_error)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.into()).map_err(template_error)?;
        Ok(Self { env, bos_token: bos_token.into(), eos_token: eos_token.into(), has_tool_use: false })
    }

    /// Adds the template rendered instead of this one when a request passes `tools` (a
    /// model's `tool_use` template, as transformers picks it from a named template list).
    pub fn with_tool_use(mut self, source: impl Into<String>) -> Result<Self> {
        self.env.add_template_owned(TOOL_USE_NAME, source.into()).map_err(template_error)?;
        self.has_tool_use = true;
        Ok(self)
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] with OpenAI `tools` (the JSON text of an array) passed as
    /// `tools`, keys in the order sent, as Python's dicts keep them; without tools, `tools` is
    /// none, as transformers passes `tools=None`.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&str>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let name = if tools.is_some() && self.has_tool_use { TOOL_USE_NAME } else { TEMPLATE_NAME };
        let template = self.env.get_template(name).map_err(template_error)?;
        let tools = match tools {
            None => Value::from(()),
            Some(json) => parse_tools(json)?,
        };
        template
            .render(minijinja::context! {
                messages => Value::from(minijinja::value::Serde(messages)),
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(template_error)
    }
}

/// The JSON text of a tools array as a template value, key order kept.
pub(crate) fn parse_tools(json: &str) -> Result<Value> {
    let invalid = || InferenceError::InvalidTools { found: json.chars().take(80).collect() };
    let value: Value = serde_json::from_str(json).map_err(|_| invalid())?;
    if value.kind() == minijinja::value::ValueKind::Seq { Ok(value) } else { Err(invalid()) }
}

/// `json.dumps(value, ensure_ascii=False)` of any serialisable value: Python's separators,
/// non-ASCII characters as they are, map keys in their order.
pub(crate) fn python_json<T: Serialize + ?Sized>(value: &T) -> Option<String> {
    let mut out = Vec::new();
    value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonSpaced)).ok()?;
    String::from_utf8(out).ok()
}

fn template_error(source: Error) -> InferenceError {
    InferenceError::Template { source }
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("template raised: {message}")))
}

/// transformers' `tojson`: `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // transformers also accepts these; they do not change our output for sorted=False input.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let result = match indent {
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonSpaced)),
        Some(n) => {
            let pad = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&pad);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, formatter))
        }
    };
    result.map_err(|err| {
        Error::new(ErrorKind::InvalidOperation, "tojson: value cannot be serialised").with_source(err)
    })?;
    String::from_utf8(out).map(Value::from_safe_string).map_err(|err| {
        Error::new(ErrorKind::InvalidOperation, "tojson: output is not UTF-8").with_source(err)
    })
}

/// Python `json.dumps`' default separators: `", "` between items, `": "` after keys.
struct PythonSpaced;

impl serde_json::ser::Formatter for PythonSpaced {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String> {
        ChatTemplate::new(source, "<s>", "</s>")?.render(messages, true)
    }

    #[test]
    fn trims_blocks_like_transformers() {
        let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}";
        assert_eq!(render(src, &[ChatMessage::user("a"), ChatMessage::user("b")]).unwrap(), "[a]\n[b]\n");
    }

    #[test]
    fn python_string_methods_and_specials() {
        let src = "{{ bos_token }}{{ messages[0].content.strip().upper() }}{% if add_generation_prompt %}!{% endif %}{{ eos_token }}";
        assert_eq!(render(src, &[ChatMessage::user("  hi ")]).unwrap(), "<s>HI!</s>");
    }

    #[test]
    fn raise_exception_is_a_typed_error() {
        let src = "{% if messages[0].role != 'system' %}{{ raise_exception('System first') }}{% endif %}";
        let err = render(src, &[ChatMessage::user("x")]).unwrap_err();
        assert!(matches!(err, InferenceError::Template { .. }));
        assert!(err.to_string().contains("System first"), "{err}");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let src = "{{ messages|tojson }}|{{ messages[0]|tojson(indent=2) }}";
        let out = render(src, &[ChatMessage::user("<é & \"q\">")]).unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"<é & \\\"q\\\">\"}]|{\n  \"role\": \"user\",\n  \"content\": \"<é & \\\"q\\\">\"\n}"
        );
    }

    #[test]
    fn tools_reach_the_template() {
        let src = "{% if tools is not none %}<tools>{{ tools|tojson }}</tools>{% else %}no tools{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let tools = r#"[{"type": "function", "function": {"name": "f", "parameters": {}}}]"#;
        assert_eq!(
            t.render_with_tools(&[ChatMessage::user("x")], Some(tools), true).unwrap(),
            "<tools>[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}]</tools>"
        );
        assert_eq!(t.render(&[ChatMessage::user("x")], true).unwrap(), "no tools");
        for bad in ["{\"type\": \"function\"}", "[", ""] {
            assert!(matches!(
                t.render_with_tools(&[ChatMessage::user("x")], Some(bad), true),
                Err(InferenceError::InvalidTools { .. })
            ));
        }
    }

    #[test]
    fn syntax_errors_are_typed() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(InferenceError::Template { .. })
        ));
    }
}
