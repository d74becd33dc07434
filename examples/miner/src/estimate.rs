//! The points a worker has earned, estimated on the miner's side with `heurist-points` for its
//! one-line status: each accepted job becomes a [`JobRecord`] (model, size and steps or tokens,
//! latency as the miner saw it) priced by the same rule set the network's reward service uses.
//! It is an estimate: the sequencer measures latency itself and may refuse or slash a result
//! later, and the GPU is not checked against the catalogue here.

use std::collections::HashMap;

use heurist_points::{JobRecord, Points, RuleSet};
use heurist_protocol::Registry;

/// Prices accepted jobs: a rule set, and the registry `type` of each model it may meet.
#[derive(Debug)]
pub struct Estimator {
    rules: RuleSet,
    types: HashMap<String, String>,
}

impl Estimator {
    /// Prices with `rules`, finding each model's type in `registry`.
    pub fn new(rules: RuleSet, registry: &Registry) -> Self {
        let types = registry.entries().map(|e| (e.name.clone(), e.model_type.as_str().to_owned())).collect();
        Self { rules, types }
    }

    /// The points of one accepted job; none when the rule set does not reward it (the reason is
    /// logged at debug level: a model outside the rules is common and not the operator's fault).
    pub fn points(&self, mut record: JobRecord) -> Option<Points> {
        if record.model_type.is_none() {
            record.model_type = self.types.get(&record.model_id).cloned();
        }
        match self.rules.points(&record) {
            Ok(p) => Some(p),
            Err(error) => {
                tracing::debug!(model = record.model_id, %error, "no points estimated for this job");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use heurist_points::Currency;

    fn estimator() -> Estimator {
        // As the binary loads it: the bundled registry and its 2024-07 edition.
        let mut registry = Registry::bundled().unwrap();
        registry.extend(Registry::bundled_2024_07().unwrap());
        Estimator::new(RuleSet::load("seed").unwrap(), &registry)
    }

    #[test]
    fn prices_image_and_chat_jobs_by_their_registry_type() {
        let e = estimator();
        // AnimagineXL is an sdxl10 model: a 1024x1024, 20-step image is 1024*1024*20 over
        // 512*512*20 pixel-steps, times SDXL's 1 over SD 1.5's 0.3.
        let image = JobRecord { model_id: "AnimagineXL".into(), width: 1024, height: 1024, steps: 20, latency_s: 6.0, ..JobRecord::default() };
        let p = e.points(image.clone()).unwrap();
        assert_eq!((p.currency(), p.micro()), (Currency::Waifu, 13_333_333));
        // Past the image timeout a job earns nothing.
        assert_eq!(e.points(JobRecord { latency_s: 60.0, ..image }).unwrap().micro(), 0);
        // 1,000 tokens of a 0.24x model.
        let chat = JobRecord { model_id: "dolphin-2.9-llama3-8b".into(), input_tokens: 600, output_tokens: 400, latency_s: 3.0, ..JobRecord::default() };
        let p = e.points(chat).unwrap();
        assert_eq!((p.currency(), p.micro()), (Currency::Llama, 240_000));
        // A model neither the registry nor the rules know earns no estimate.
        assert!(e.points(JobRecord { model_id: "no-such-model".into(), input_tokens: 9, latency_s: 1.0, ..JobRecord::default() }).is_none());
    }
}
