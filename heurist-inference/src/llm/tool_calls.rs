//! Hermes-style tool calls: the model writes `<tool_call>{"name": …, "arguments": {…}}</tool_call>`
//! blocks (NousResearch's Hermes 2 Pro format, which the network's Hermes / OpenHermes models
//! use) and the answer carries them as OpenAI `tool_calls`.
//!
//! Parsing follows vLLM's `hermes` tool parser (`Hermes2ProToolParser.extract_tool_calls`):
//! - each `<tool_call>…</tool_call>` block, and a last block left open when generation stopped,
//!   holds one JSON object with `name` and `arguments`;
//! - the message content is the text before the first `<tool_call>`, `None` when that is blank;
//! - `arguments` become a JSON string (`json.dumps(…, ensure_ascii=False)`: `", "` and `": "`
//!   separators, non-ASCII kept);
//! - if any block is not such an object, nothing is a tool call and the whole text is the
//!   content (vLLM logs the error and does the same).
//!
//! Call ids are `call_<index>` in order, deterministic so that a seeded request gives the same
//! answer twice (vLLM draws random ids; clients only match a tool result to its call by id).

use serde::{Deserialize, Serialize};

use crate::llm::request::FinishReason;
use crate::llm::template::python_json;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// One OpenAI tool call in an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id (`call_0`, `call_1` … in order).
    pub id: String,
    /// Always `"function"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Which function, with what arguments.
    pub function: FunctionCall,
}

/// The function part of a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// Its arguments, as a JSON text.
    pub arguments: String,
}

/// What the model said: the content around the calls, and the calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedToolCalls {
    /// The text before the first `<tool_call>`, or the whole text when there are no calls;
    /// `None` when blank before a call.
    pub content: Option<String>,
    /// The calls, in order.
    pub tool_calls: Vec<ToolCall>,
}

/// Splits a completion into content and Hermes tool calls (see the module docs).
pub fn parse_tool_calls(text: &str) -> ParsedToolCalls {
    let no_calls = || ParsedToolCalls { content: Some(text.to_owned()), tool_calls: Vec::new() };
    let Some(first) = text.find(OPEN) else { return no_calls() };
    let mut tool_calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(start) = rest.find(OPEN) {
        let body_start = start + OPEN.len();
        let (body, next) = match rest[body_start..].find(CLOSE) {
            Some(end) => (&rest[body_start..body_start + end], &rest[body_start + end + CLOSE.len()..]),
            None => (&rest[body_start..], ""),
        };
        match call_from_json(body.trim(), tool_calls.len()) {
            Some(call) => tool_calls.push(call),
            None => return no_calls(),
        }
        rest = next;
    }
    let before = &text[..first];
    let content = (!before.trim().is_empty()).then(|| before.to_owned());
    ParsedToolCalls { content, tool_calls }
}

/// A finished completion's text and finish reason as the answer reports them when the request
/// had tools: with calls, the content before them, the calls, and [`FinishReason::ToolCalls`];
/// without, unchanged.
pub(crate) fn split_tool_calls(text: String, finish_reason: FinishReason) -> (String, Vec<ToolCall>, FinishReason) {
    let parsed = parse_tool_calls(&text);
    if parsed.tool_calls.is_empty() {
        (text, Vec::new(), finish_reason)
    } else {
        (parsed.content.unwrap_or_default(), parsed.tool_calls, FinishReason::ToolCalls)
    }
}

fn call_from_json(body: &str, index: usize) -> Option<ToolCall> {
    #[derive(Deserialize)]
    struct Raw {
        name: String,
        // A template value keeps the keys in the order the model wrote them.
        #[serde(default)]
        arguments: minijinja::Value,
    }
    let raw: Raw = serde_json::from_str(body).ok()?;
    let arguments = if raw.arguments.is_none() || raw.arguments.is_undefined() {
        "{}".to_owned()
    } else {
        python_json(&raw.arguments)?
    };
    Some(ToolCall {
        id: format!("call_{index}"),
        kind: "function".to_owned(),
        function: FunctionCall { name: raw.name, arguments },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_with_content_before() {
        let parsed = parse_tool_calls(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"days\": [1,2], \"city\": \"Zürich\"}}\n</tool_call>",
        );
        assert_eq!(parsed.content.as_deref(), Some("Let me check.\n"));
        assert_eq!(parsed.tool_calls.len(), 1);
        let call = &parsed.tool_calls[0];
        assert_eq!((call.id.as_str(), call.kind.as_str()), ("call_0", "function"));
        assert_eq!(call.function.name, "get_weather");
        // Key order as written, Python's separators, non-ASCII kept.
        assert_eq!(call.function.arguments, r#"{"days": [1, 2], "city": "Zürich"}"#);
    }

    #[test]
    fn several_calls_and_an_unclosed_last_one() {
        let parsed = parse_tool_calls(
            "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": {\"x\": null}}",
        );
        assert_eq!(parsed.content, None);
        let names: Vec<_> = parsed.tool_calls.iter().map(|c| (c.id.as_str(), c.function.name.as_str())).collect();
        assert_eq!(names, [("call_0", "a"), ("call_1", "b")]);
        assert_eq!(parsed.tool_calls[1].function.arguments, r#"{"x": null}"#);
    }

    #[test]
    fn bad_json_means_no_calls() {
        for text in [
            "<tool_call>{\"name\": \"a\", \"arguments\": {}</tool_call>",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "ok <tool_call>{\"name\": \"a\"}</tool_call><tool_call>not json</tool_call>",
        ] {
            let parsed = parse_tool_calls(text);
            assert_eq!(parsed.content.as_deref(), Some(text));
            assert!(parsed.tool_calls.is_empty(), "{text}");
        }
    }

    #[test]
    fn plain_text_is_content() {
        assert_eq!(
            parse_tool_calls("Paris."),
            ParsedToolCalls { content: Some("Paris.".into()), tool_calls: vec![] }
        );
    }

    #[test]
    fn answers_with_calls_finish_with_tool_calls() {
        let (text, calls, reason) =
            split_tool_calls("<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>".into(), FinishReason::Stop);
        assert_eq!((text.as_str(), calls.len(), reason), ("", 1, FinishReason::ToolCalls));
        // A call cut off by max_tokens is still a call when its JSON is whole.
        let (_, calls, reason) =
            split_tool_calls("<tool_call>{\"name\": \"f\"}".into(), FinishReason::Length);
        assert_eq!((calls.len(), reason), (1, FinishReason::ToolCalls));
        let (text, calls, reason) = split_tool_calls("no calls".into(), FinishReason::Length);
        assert_eq!((text.as_str(), calls.len(), reason), ("no calls", 0, FinishReason::Length));
    }

    #[test]
    fn missing_arguments_are_an_empty_object() {
        let parsed = parse_tool_calls("<tool_call>{\"name\": \"now\"}</tool_call>");
        assert_eq!(parsed.tool_calls[0].function.arguments, "{}");
    }
}
