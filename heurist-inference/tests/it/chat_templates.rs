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
