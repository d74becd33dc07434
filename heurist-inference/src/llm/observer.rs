//! A hook to watch each generated (or scored) token, for verifiers and tests.
//!
//! The engine calls [`TokenObserver::on_token`] once per generated token, after choosing it and
//! before feeding it back, with the raw logits the choice was made from (before any
//! temperature) and the token's log-probability under them. This is how `heurist-verify`
//! reads log-probabilities without `heurist-inference` knowing it exists.
//!
//! # Hidden states
//! An observer whose [`TokenObserver::hidden_layers`] names layers also receives, with each
//! token, the residual stream at those layers ([`TokenEvent::hidden_states`]), numbered as
//! transformers' `output_hidden_states` numbers them for a model of `L` decoder layers:
//! - `0`: the token embeddings (the input of decoder layer 0);
//! - `i` in `1..L`: the output of decoder layer `i - 1` (the input of layer `i`);
//! - `L`: the output of the last decoder layer after the final RMSNorm, what the vocabulary
//!   projection reads (transformers appends the normed state last, not the raw one).
//!
//! They are the states of the position whose logits the event carries: the last prompt token
//! for the first completion token, then the completion token before. A body that cannot
//! report them (candle's quantized GGUF llama) makes the request fail with
//! [`crate::InferenceError::HiddenStatesUnsupported`], and a layer past `L` with
//! [`crate::InferenceError::InvalidHiddenLayer`], before any forward pass: never an empty
//! answer. Nothing is copied when no observer asks.

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
    /// The residual stream at the layers the observer asked for (empty when it asked for
    /// none); see the [module docs](self) for the numbering.
    pub hidden_states: HiddenStates<'a>,
}

/// The hidden states of one position at the layers an observer asked for, in the order asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct HiddenStates<'a> {
    layers: &'a [usize],
    /// `layers.len() × hidden_size` values, layer after layer.
    values: &'a [f32],
}

impl<'a> HiddenStates<'a> {
    /// `values` holds `layers.len()` rows of equal width, in the order of `layers`.
    pub(crate) fn new(layers: &'a [usize], values: &'a [f32]) -> Self {
        debug_assert!(layers.is_empty() && values.is_empty() || values.len() % layers.len() == 0);
        Self { layers, values }
    }

    /// No layers were asked for.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The layers held, in the order the observer asked for them.
    pub fn layers(&self) -> &'a [usize] {
        self.layers
    }

    /// The model's hidden size (values per layer); 0 when empty.
    pub fn hidden_size(&self) -> usize {
        if self.layers.is_empty() { 0 } else { self.values.len() / self.layers.len() }
    }

    /// The state at `layer` (a layer index, not a place in [`HiddenStates::layers`]), if it
    /// was asked for.
    pub fn get(&self, layer: usize) -> Option<&'a [f32]> {
        let at = self.layers.iter().position(|&l| l == layer)?;
        let width = self.hidden_size();
        self.values.get(at * width..(at + 1) * width)
    }

    /// `(layer, state)` pairs in the order asked.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &'a [f32])> + 'a {
        let width = self.hidden_size().max(1);
        self.layers.iter().copied().zip(self.values.chunks_exact(width))
    }
}

/// Receives every generated token of one request, in order.
pub trait TokenObserver {
    /// Called once per generated token, the end-of-generation token included.
    fn on_token(&mut self, event: &TokenEvent<'_>);

    /// Called with several consecutive events when the engine has them at once: teacher-forced
    /// scoring ([`crate::ChatEngine::score`]) hands over up to 64 positions of one pass
    /// together. By default each goes to [`TokenObserver::on_token`], in order; an observer
    /// whose work per position does not depend on the other positions (a verifier's statistics
    /// over the whole vocabulary) can spread it over threads here. Either way every event is
    /// delivered exactly once, in order of `index`.
    fn on_tokens(&mut self, events: &[TokenEvent<'_>]) {
        for event in events {
            self.on_token(event);
        }
    }

    /// The layers whose hidden states each event should carry (see the [module docs](self));
    /// asked once, before the request runs. None by default, which costs nothing.
    fn hidden_layers(&self) -> &[usize] {
        &[]
    }
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

/// An observer (a closure, say) that also asks for the hidden states at `layers`.
///
/// ```
/// use heurist_inference::{TokenEvent, WithHiddenStates};
///
/// let mut last_layer = Vec::new();
/// let observer = WithHiddenStates::new([0, 30], |e: &TokenEvent<'_>| {
///     last_layer.push(e.hidden_states.get(30).map(<[f32]>::to_vec));
/// });
/// # drop(observer);
/// ```
#[derive(Debug, Clone)]
pub struct WithHiddenStates<O> {
    layers: Vec<usize>,
    inner: O,
}

impl<O: TokenObserver> WithHiddenStates<O> {
    /// `inner`, receiving the hidden states at `layers` with each event.
    pub fn new(layers: impl IntoIterator<Item = usize>, inner: O) -> Self {
        Self { layers: layers.into_iter().collect(), inner }
    }

    /// The wrapped observer.
    pub fn into_inner(self) -> O {
        self.inner
    }
}

impl<O: TokenObserver> TokenObserver for WithHiddenStates<O> {
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        self.inner.on_token(event)
    }

    fn on_tokens(&mut self, events: &[TokenEvent<'_>]) {
        self.inner.on_tokens(events)
    }

    fn hidden_layers(&self) -> &[usize] {
        &self.layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_states_are_looked_up_by_layer() {
        let layers = [3, 0];
        let values = [1.0, 2.0, 3.0, 4.0];
        let h = HiddenStates::new(&layers, &values);
        assert_eq!(h.hidden_size(), 2);
        assert_eq!(h.get(0), Some(&[3.0, 4.0][..]));
        assert_eq!(h.get(3), Some(&[1.0, 2.0][..]));
        assert_eq!(h.get(1), None);
        assert_eq!(h.iter().map(|(l, _)| l).collect::<Vec<_>>(), [3, 0]);
        let none = HiddenStates::default();
        assert!(none.is_empty() && none.get(0).is_none() && none.iter().next().is_none());
    }
}
