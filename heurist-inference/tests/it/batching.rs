//! Continuous batching on the real model: requests sharing decode steps give exactly what each
//! gives alone through `ChatEngine::chat` (their observers too: the same log-probabilities,
//! logits and hidden states, bit for bit); errors and cancellations stay with their request.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use heurist_inference::{
    ChatEngine, ChatEvent, ChatOutput, ChatRequest, ChatServer, DeviceSpec, FinishReason, InferenceError, NoObserver,
    TokenEvent, WithHiddenStates, smollm2_path,
};

use crate::support::{fixture, model_lock};

/// The server takes an `Arc` of the engine; this one is loaded once per test binary.
fn shared_engine() -> Arc<ChatEngine> {
    static ENGINE: OnceLock<Arc<ChatEngine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| {
        let path = smollm2_path().unwrap_or_else(|err| panic!("{err}"));
        Arc::new(ChatEngine::load_gguf(&path, DeviceSpec::Cpu).unwrap_or_else(|err| panic!("{err}")))
    }))
}

/// Eight requests: mixed prompt lengths (the fixture's cases), greedy and sampled at several
/// temperatures and seeds, different `max_tokens`, and stop strings that some answers hit.
fn mixed_requests() -> Vec<ChatRequest> {
    let cases = &fixture().cases;
    let settings: [(f64, u64, usize, &[&str]); 8] = [
        (0.0, 1, 20, &[]),
        (0.7, 42, 16, &["."]),
        (1.0, 7, 24, &[","]),
        (0.0, 3, 9, &[" the"]),
        (0.9, 1234, 20, &["\n"]),
        (0.3, 99, 14, &[]),
        (1.2, 5, 18, &[" is", "!"]),
        (0.0, 11, 22, &["e"]),
    ];
    cases
        .iter()
        .zip(settings)
        .map(|(case, (temperature, seed, max_tokens, stops))| {
            ChatRequest::new(case.chat_messages())
                .with_sampling(temperature, Some(seed))
                .with_max_tokens(max_tokens)
                .with_stop(stops.iter().copied())
        })
        .collect()
}

fn assert_same(i: usize, batched: &ChatOutput, alone: &ChatOutput) {
    assert_eq!(batched.token_ids, alone.token_ids, "request {i}: tokens");
    assert_eq!(batched.text, alone.text, "request {i}: text");
    assert_eq!(batched.finish_reason, alone.finish_reason, "request {i}: finish reason");
    assert_eq!(batched.usage, alone.usage, "request {i}: usage");
}

/// Collects a handle's streamed pieces and answer.
fn collect(handle: heurist_inference::ChatHandle) -> (Vec<String>, ChatOutput) {
    let mut pieces = Vec::new();
    while let Some(event) = handle.recv() {
        match event {
            ChatEvent::Text(piece) => pieces.push(piece),
            ChatEvent::Done(result) => return (pieces, result.unwrap_or_else(|err| panic!("{err}"))),
        }
    }
    panic!("the handle ended without an answer");
}

#[test]
fn eight_concurrent_requests_give_what_each_gives_alone() {
    let _model = model_lock();
    let engine = shared_engine();
    let requests = mixed_requests();
    let alone: Vec<ChatOutput> = requests.iter().map(|r| engine.chat(r).unwrap()).collect();
    let by_stop_string = alone
        .iter()
        .filter(|o| o.finish_reason == FinishReason::Stop && !engine.tokenizer().is_end_of_generation(*o.token_ids.last().unwrap()))
        .count();
    assert!(by_stop_string >= 2, "only {by_stop_string} answers hit a stop string: the test would not cover them");
    let lengths: Vec<usize> = alone.iter().map(|o| o.token_ids.len()).collect();
    assert!(lengths.iter().min() < lengths.iter().max(), "{lengths:?}: requests should leave the batch at different steps");

    // Eight at once, and again with room for three: requests then queue and join the running
    // batch as others leave. Submitted from their own threads at staggered times, half streamed.
    for max_batch in [8, 3] {
        let server = Arc::new(ChatServer::new(Arc::clone(&engine), max_batch).unwrap());
        let threads: Vec<_> = requests
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, request)| {
                let server = Arc::clone(&server);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(15 * i as u64));
                    if i % 2 == 0 {
                        collect(server.submit_stream(request))
                    } else {
                        (Vec::new(), server.submit(request).wait().unwrap())
                    }
                })
            })
            .collect();
        for (i, (thread, alone)) in threads.into_iter().zip(&alone).enumerate() {
            let (pieces, out) = thread.join().unwrap();
            assert_same(i, &out, alone);
            if i % 2 == 0 {
                assert_eq!(pieces.concat(), out.text, "request {i}: streamed pieces");
            } else {
                assert!(pieces.is_empty());
            }
        }
        Arc::try_unwrap(server).unwrap().shutdown();
    }
}

#[test]
fn bad_and_cancelled_requests_leave_the_others_alone() {
    let _model = model_lock();
    let engine = shared_engine();
    assert!(matches!(ChatServer::new(Arc::clone(&engine), 0), Err(InferenceError::InvalidBatchSize { max_batch: 0 })));

    let good = mixed_requests().swap_remove(2);
    let alone = engine.chat(&good).unwrap();
    let mut unbounded = good.clone().with_max_tokens(4096);
    unbounded.stop.clear();
    let server = ChatServer::new(Arc::clone(&engine), 4).unwrap();
    let long = server.submit(unbounded.clone());
    let zero = server.submit(good.clone().with_max_tokens(0));
    let empty = server.submit(ChatRequest::new(Vec::new()));
    let first = server.submit(good.clone());
    // Cancelled mid-answer: its handle is dropped after the first piece of text arrives.
    let streamed = server.submit_stream(unbounded);
    assert!(matches!(streamed.recv(), Some(ChatEvent::Text(_))));
    drop(streamed);
    drop(long);
    let second = server.submit(good.clone());

    assert!(matches!(zero.wait(), Err(InferenceError::InvalidMaxTokens { max_tokens: 0, .. })));
    assert!(matches!(empty.wait(), Err(InferenceError::EmptyMessages)));
    assert_same(0, &first.wait().unwrap(), &alone);
    assert_same(1, &second.wait().unwrap(), &alone);

    // Shutting down finishes what was submitted before it.
    let last = server.submit(good.clone());
    server.shutdown();
    assert_same(2, &last.wait().unwrap(), &alone);
}

/// What an observer saw of one token: its index, id, log-probability and logits (as bits,
/// digested: eight requests' full logits would be tens of megabytes) and hidden states.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    index: usize,
    token_id: u32,
    log_prob_bits: u32,
    logits_digest: u64,
    hidden: Vec<(usize, Vec<u32>)>,
}

impl Seen {
    fn of(e: &TokenEvent<'_>) -> Self {
        let logits_digest = e
            .logits
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, v| (h ^ u64::from(v.to_bits())).wrapping_mul(0x100_0000_01b3));
        Self {
            index: e.index,
            token_id: e.token_id,
            log_prob_bits: e.log_prob.to_bits(),
            logits_digest,
            hidden: e.hidden_states.iter().map(|(l, h)| (l, h.iter().map(|v| v.to_bits()).collect())).collect(),
        }
    }
}

/// The layers request `i` asks for: none for some, the embeddings, a middle layer and the
/// final norm's output for others.
fn layers_for(i: usize) -> Vec<usize> {
    if i % 2 == 1 { vec![0, 7, 30] } else { Vec::new() }
}

#[test]
fn observers_see_in_a_batch_what_they_see_alone() {
    let _model = model_lock();
    let engine = shared_engine();
    let requests = mixed_requests();
    let alone: Vec<Vec<Seen>> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut seen = Vec::new();
            let mut observer = WithHiddenStates::new(layers_for(i), |e: &TokenEvent<'_>| seen.push(Seen::of(e)));
            engine.chat_with_observer(r, &mut observer).unwrap();
            seen
        })
        .collect();
    assert!(alone.iter().all(|s| !s.is_empty()));
    assert_eq!(alone[1][0].hidden.len(), 3);

    let server = ChatServer::new(Arc::clone(&engine), 8).unwrap();
    let logs: Vec<Arc<Mutex<Vec<Seen>>>> = requests.iter().map(|_| Arc::default()).collect();
    let handles: Vec<_> = requests
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, request)| {
            let log = Arc::clone(&logs[i]);
            let observer = WithHiddenStates::new(layers_for(i), move |e: &TokenEvent<'_>| {
                log.lock().unwrap().push(Seen::of(e));
            });
            if i % 3 == 0 {
                server.submit_stream_with_observer(request, observer)
            } else {
                server.submit_with_observer(request, observer)
            }
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let out = handle.wait().unwrap();
        let seen = logs[i].lock().unwrap();
        assert_eq!(seen.len(), out.token_ids.len(), "request {i}: one event per token");
        assert!(*seen == alone[i], "request {i}: the batched events differ from those alone");
    }
    server.shutdown();

    // A layer the model does not have fails that request, before it runs.
    let server = ChatServer::new(Arc::clone(&engine), 2).unwrap();
    let bad = server.submit_with_observer(requests[0].clone(), WithHiddenStates::new([31], NoObserver));
    assert!(matches!(bad.wait(), Err(InferenceError::InvalidHiddenLayer { layer: 31, layers: 30 })));
}
