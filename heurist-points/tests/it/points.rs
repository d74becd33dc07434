//! Totals over 10^6 random jobs: the same in any order and any batching, and equal to an
//! independent computation of the seed's formula.

use heurist_points::{Currency, JobRecord, RuleSet, Totals};
use proptest::prelude::*;

/// The jobs of one test case.
const JOBS: usize = 1_000_000;

/// splitmix64: a small, seedable generator, so that a case is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// (model id, registry type, seed multiplier in millionths, image?)
const MODELS: [(&str, &str, u128, bool); 8] = [
    ("Aurora", "sd15", 300_000, true),
    ("MagusDevon", "composite15", 300_000, true),
    ("SDXL", "sdxl10", 1_000_000, true),
    ("PepeXL", "compositexl", 1_200_000, true),
    ("FLUX.1-dev", "flux-dev", 10_000_000, true),
    ("dolphin-2.9-llama3-8b", "llm8b16b", 240_000, false),
    ("openhermes-2-pro-mistral-7b", "llm7b16b", 200_000, false),
    ("openhermes-mixtral-8x7b-gptq", "llm8x7b4b", 1_000_000, false),
];

fn random_job(rng: &mut Rng) -> (JobRecord, usize) {
    let m = rng.below(MODELS.len() as u64) as usize;
    let (id, ty, _, image) = MODELS[m];
    let mut job = JobRecord { model_id: id.to_owned(), model_type: Some(ty.to_owned()), ..Default::default() };
    if image {
        job.width = 64 * (1 + rng.below(40) as u32); // up to 2560, past the clamps
        job.height = 64 * (1 + rng.below(40) as u32);
        job.steps = 1 + rng.below(60) as u32;
        job.latency_s = rng.below(20_000) as f64 / 1000.0; // 0 to 20 s: some past 18 s
    } else {
        job.input_tokens = rng.below(8_000);
        job.output_tokens = rng.below(4_000);
        job.latency_s = rng.below(200_000) as f64 / 1000.0; // 0 to 200 s: some past 180 s
    }
    (job, m)
}

/// The seed's formula written out independently of the crate, in u128.
fn reference_micro(job: &JobRecord, model: usize) -> u128 {
    let (_, ty, multiplier, image) = MODELS[model];
    if image {
        if job.latency_s > 18.0 {
            return 0;
        }
        let max = if ty == "flux-dev" { 2048 } else { 1024 };
        let px = u128::from(job.width.min(max)) * u128::from(job.height.min(max)) * u128::from(job.steps);
        // px / (512*512*20) * m / 0.3, in micro-points.
        px * multiplier * 1_000_000 / (512 * 512 * 20 * 300_000)
    } else {
        if job.latency_s > 180.0 {
            return 0;
        }
        let tokens = u128::from(job.input_tokens + job.output_tokens);
        tokens * multiplier / 1000
    }
}

proptest! {
    // Each case is 10^6 jobs, each computed twice: a few cases keep the suite quick.
    #![proptest_config(ProptestConfig::with_cases(3))]

    #[test]
    fn million_job_total_is_order_and_batch_independent(seed in any::<u64>(), shuffle_seed in any::<u64>()) {
        let rules = RuleSet::preset("seed").unwrap();
        let mut rng = Rng(seed);
        let jobs: Vec<(JobRecord, usize)> = (0..JOBS).map(|_| random_job(&mut rng)).collect();

        // In order, one total per currency, checked against the independent formula.
        let mut in_order = Totals::default();
        let (mut want_waifu, mut want_llama) = (0u128, 0u128);
        for (job, model) in &jobs {
            let p = rules.points(job).unwrap();
            let want = reference_micro(job, *model);
            prop_assert_eq!(u128::from(p.micro()), want, "{:?}", job);
            match p.currency() {
                Currency::Waifu => want_waifu += want,
                Currency::Llama => want_llama += want,
            }
            in_order.add(p);
        }
        prop_assert_eq!(u128::from(in_order.waifu.micro()), want_waifu);
        prop_assert_eq!(u128::from(in_order.llama.micro()), want_llama);

        // Shuffled (Fisher-Yates), recomputed, summed in random batches, batches summed backwards.
        let mut order: Vec<usize> = (0..JOBS).collect();
        let mut rng = Rng(shuffle_seed);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut batches: Vec<Totals> = Vec::new();
        let mut rest = &order[..];
        while !rest.is_empty() {
            let size = (1 + rng.below(5_000) as usize).min(rest.len());
            let (batch, tail) = rest.split_at(size);
            let mut t = Totals::default();
            t.extend(batch.iter().map(|&i| rules.points(&jobs[i].0).unwrap()));
            batches.push(t);
            rest = tail;
        }
        let mut batched = Totals::default();
        for t in batches.into_iter().rev() {
            batched += t;
        }
        prop_assert_eq!(batched, in_order);
    }
}
