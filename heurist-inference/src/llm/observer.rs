//! A hook to watch each generated token, for verifiers and tests.
//!
//! The engine calls [`TokenObserver::on_token`] once per generated token, after choosing it and
//! before feeding it back, with the raw logits the choice was made from (before any
//! temperature) and the token's log-probability under them. This is how `heurist-verify`
//! reads log-probabilities without `heurist-inference` knowing it exists. Hidden states at
//! chosen layers will join [`TokenEvent`] when the engine runs its own model bodies.

/// One generated token and what the model thought of it.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    /// 0 for the first completion token.
    pub index: usize,
    /// The chosen token.
    pub token_id: u32,
    /// `log softmax(logits)[token_id]`.
    pub log_prob: f32,
    /// The model's logits over the whole vocabulary at this step.
    pub logits: &'a [f32],
}

/// Receives every generated token of one request, in order.
pub trait TokenObserver {
    /// Called once per generated token, the end-of-generation token included.
    fn on_token(&mut self, event: &TokenEvent<'_>);
}

/// The observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl TokenObserver for NoObserver {
    fn on_token(&mut self, _event: &TokenEvent<'_>) {}
}

impl<F: FnMut(&TokenEvent<'_>)> TokenObserver for F {
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        self(event)
    }
}
