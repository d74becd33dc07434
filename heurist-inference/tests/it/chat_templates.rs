//! The network's chat templates rendered by our minijinja renderer equal transformers'
//! `apply_chat_template` (Jinja2), fixtures from tools/make_transformers_fixtures.py: ChatML as
//! dolphin-2.9-llama3-8b, openhermes-2-pro-mistral-7b (Hermes 2 Pro, with BOS) and
//! openhermes-mixtral-8x7b-gptq publish it, Llama 3's official template (whitespace trimmed,
//! BOS on the first message) and Mistral's `[INST]` (which rejects system messages and
//! non-alternating roles with `raise_exception`).

use heurist_inference::{ChatMessage, ChatTemplate, InferenceError};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct TemplateFixture {
    name: String,
    template: String,
    bos_token: String,
    eos_token: String,
    renders: Vec<Render>,
}

#[derive(Debug, Deserialize)]
struct Render {
    messages: serde_json::Value,
    add_generation_prompt: bool,
    rendered: Option<String>,
    error: Option<String>,
}

fn fixtures() -> Vec<TemplateFixture> {
    serde_json::from_str(include_str!("../fixtures/transformers/templates.json")).expect("templates.json parses")
}

#[test]
fn templates_render_as_transformers_does() {
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 5);
    let mut compared = 0;
    for fixture in &fixtures {
        let template = ChatTemplate::new(fixture.template.clone(), fixture.bos_token.clone(), fixture.eos_token.clone())
            .unwrap_or_else(|err| panic!("{}: {err}", fixture.name));
        for (i, render) in fixture.renders.iter().enumerate() {
            let messages = ChatMessage::parse_list(&render.messages.to_string()).expect("fixture messages");
            let ours = template.render(&messages, render.add_generation_prompt);
            match (&render.rendered, &render.error, ours) {
                (Some(want), None, Ok(got)) => {
                    assert_eq!(&got, want, "{} render {i}", fixture.name);
                    compared += 1;
                }
                (None, Some(why), Err(err)) => {
                    assert!(matches!(err, InferenceError::Template { .. }), "{}: {err:?}", fixture.name);
                    // The template's own message comes through.
                    let first_words: String = why.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                    assert!(err.to_string().contains(&first_words), "{}: {err} vs {why}", fixture.name);
                }
                (want, why, got) => panic!("{} render {i}: transformers {want:?} / {why:?}, ours {got:?}", fixture.name),
            }
        }
    }
    // 5 templates x 10 conversations x 2, less the 6 [INST] rejects (system messages).
    assert_eq!(compared, 94);
}

/// Messages and tools are kept as JSON text: `serde_json::Value` would sort their keys, and
/// the order reaches the template (`tojson`, `|items`) as transformers saw it.
#[derive(Debug, Deserialize)]
struct ToolTemplateFixture {
    template: String,
    named_templates: Vec<NamedTemplate>,
    bos_token: String,
    eos_token: String,
    tools_json: String,
    renders: Vec<ToolRender>,
    picked: Vec<Picked>,
}

#[derive(Debug, Deserialize)]
struct ToolRender {
    messages_json: String,
    add_generation_prompt: bool,
    rendered: String,
}

#[derive(Debug, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Debug, Deserialize)]
struct Picked {
    messages_json: String,
    with_tools: bool,
    rendered: String,
}

fn tool_fixture() -> ToolTemplateFixture {
    serde_json::from_str(include_str!("../fixtures/transformers/tool_templates.json")).expect("tool_templates.json parses")
}

/// Hermes 2 Pro's tool_use template (openhermes-2-pro-mistral-7b) with OpenAI tools, assistant
/// messages carrying `tool_calls` (arguments as a JSON string and as an object, content null
/// or empty), consecutive tool results with `tool_call_id` and `name`, and a conversation
/// going on after them: our render equals transformers' `apply_chat_template(tools=...)`.
#[test]
fn tool_use_template_renders_as_transformers_does() {
    let fixture = tool_fixture();
    let template = ChatTemplate::new(fixture.template.clone(), fixture.bos_token.clone(), fixture.eos_token.clone())
        .expect("tool_use template compiles");
    let tools = &fixture.tools_json;
    for (i, render) in fixture.renders.iter().enumerate() {
        let messages = ChatMessage::parse_list(&render.messages_json).expect("fixture messages");
        let ours = template.render_with_tools(&messages, Some(tools), render.add_generation_prompt).expect("renders");
        assert_eq!(ours, render.rendered, "render {i}");
    }
    assert_eq!(fixture.renders.len(), 8);
}

/// A model naming a `default` and a `tool_use` template (Hermes 2 Pro's tokenizer_config.json
/// does): the tool_use one renders when the request has tools, the default one otherwise, as
/// transformers picks them.
#[test]
fn named_templates_are_picked_as_transformers_picks_them() {
    let fixture = tool_fixture();
    let named = |name: &str| fixture.named_templates.iter().find(|t| t.name == name).map(|t| t.template.clone());
    let template = ChatTemplate::new(named("default").expect("default"), fixture.bos_token.clone(), fixture.eos_token.clone())
        .and_then(|t| t.with_tool_use(named("tool_use").expect("tool_use")))
        .expect("templates compile");
    let tools = &fixture.tools_json;
    for (i, picked) in fixture.picked.iter().enumerate() {
        let messages = ChatMessage::parse_list(&picked.messages_json).expect("fixture messages");
        let ours = template.render_with_tools(&messages, picked.with_tools.then_some(tools.as_str()), true).expect("renders");
        assert_eq!(ours, picked.rendered, "case {i} (tools: {})", picked.with_tools);
    }
}

#[test]
fn tool_messages_parse_from_openai_json() {
    let messages = ChatMessage::parse_list(
        r#"[{"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function",
             "function": {"name": "f", "arguments": {"b": 1, "a": "é"}}}]},
            {"role": "tool", "tool_call_id": "call_0", "name": "f", "content": "ok"}]"#,
    )
    .expect("parses");
    let call = &messages[0].tool_calls.as_ref().expect("calls")[0];
    // An object's keys stay in the order sent, written as Python's json.dumps writes them.
    assert_eq!(call.function.arguments, r#"{"b": 1, "a": "é"}"#);
    assert_eq!(messages[0].content, "");
    assert_eq!(messages[1], ChatMessage::tool_result("call_0", "f", "ok"));
    // Only an assistant message with tool calls may leave its content out.
    let err = ChatMessage::parse_list(r#"[{"role": "user", "content": null}]"#).expect_err("null user content");
    assert!(matches!(err, InferenceError::InvalidMessage { index: 0, .. }), "{err:?}");
}
