//! Image checks against honest images made by another engine: diffusers' StableDiffusionPipeline
//! on the tiny SD 1.5 model, in f32 and in f16 (tools/make_sd_verify_fixtures.py), re-run here
//! with heurist-inference. Every honest image must hold under the network's bars; the same
//! image judged against another job's re-run must not. (tests/it/image_network.rs judges the
//! reference miner's own pipelines, in three precisions, over four job kinds.)

use heurist_inference::DeviceSpec;
use heurist_inference::image::noise::NoiseDType;
use heurist_inference::image::{ImageEngine, ImageJob, PromptEncoding};
use heurist_inference::Result as InferenceResult;
use heurist_verify::image::rerun::{check_rgb, reference_image, rerun};
use heurist_verify::image::{
    ImageReason, ImageThresholds, ImageVerdict, Precision, PrecisionBars, compare_rgb, rgb_image,
};

use crate::sibling_fixture;

struct Honest {
    ids: Vec<Vec<u32>>,
    neg_ids: Vec<Vec<u32>>,
    jobs: Vec<ImageJob>,
    f32: Vec<Vec<u8>>,
    half: Vec<Vec<u8>>,
}

fn honest() -> Honest {
    let path = sibling_fixture("heurist-inference", "sd/verify_honest.safetensors");
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    let ids = |k: &str| -> Vec<Vec<u32>> {
        t[k].to_vec2::<i64>().unwrap().into_iter().map(|r| r.into_iter().map(|v| v as u32).collect()).collect()
    };
    let seeds = t["seed"].to_vec1::<i64>().unwrap();
    let steps = t["steps"].to_vec1::<i64>().unwrap();
    let guidance = t["guidance"].to_vec1::<f32>().unwrap();
    let images = |k: &str| -> Vec<Vec<u8>> {
        let n = t[k].dim(0).unwrap();
        (0..n).map(|i| t[k].get(i).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap()).collect()
    };
    let (ids, neg_ids) = (ids("ids"), ids("neg_ids"));
    // The prompt names the job's row; the tokenizer below maps it to the recorded ids.
    let jobs = (0..seeds.len())
        .map(|i| ImageJob {
            prompt: format!("{i}"),
            neg_prompt: format!("-{i}"),
            width: 64,
            height: 64,
            steps: steps[i] as usize,
            guidance_scale: f64::from(guidance[i]),
            seed: seeds[i] as u64,
            sampler: None,
        })
        .collect();
    Honest { ids, neg_ids, jobs, f32: images("image_f32"), half: images("image_half") }
}

/// Maps "i" to the recorded prompt ids of job i and "-i" to its negative ids.
fn tokenizer(h: &Honest) -> impl Fn(&str) -> InferenceResult<Vec<u32>> + '_ {
    move |text: &str| {
        let (neg, row) = text.strip_prefix('-').map_or((false, text), |r| (true, r));
        let row: usize = row.parse().expect("the tests' prompts are row numbers");
        let ids = if neg { &h.neg_ids[row] } else { &h.ids[row] };
        // The engine pads itself; hand it BOS..EOS.
        let end = ids.iter().position(|&t| t == 49407).map_or(ids.len(), |e| e + 1);
        Ok(ids[..end].to_vec())
    }
}

fn engine() -> ImageEngine {
    ImageEngine::load_checkpoint(sibling_fixture("heurist-inference", "sd/tiny-sd15-fp16.safetensors"), DeviceSpec::Cpu).unwrap()
}

#[test]
fn honest_diffusers_images_hold_in_f32_and_f16() {
    let h = honest();
    let engine = engine();
    let tok = tokenizer(&h);
    let bars = PrecisionBars::NETWORK;
    for (i, job) in h.jobs.iter().enumerate() {
        for (image, precision) in [(&h.f32[i], Precision::F32), (&h.half[i], Precision::F16)] {
            let ours = reference_image(&rerun(&engine, job, PromptEncoding::TokenIds(&tok), precision.into()).unwrap()).unwrap();
            let e = compare_rgb(&rgb_image(64, 64, image.clone()).unwrap(), &ours);
            let th = bars.get(precision);
            assert!(th.judge(e).holds(), "job {i}, diffusers {precision}: {e}");
            // The bars keep a margin over what honest images measured.
            assert!(e.psnr >= th.min_psnr + 2.0 && e.ssim > th.min_ssim + 0.02, "job {i}, {precision}: {e}");
        }
    }
}

#[test]
fn one_step_fewer_is_caught_by_the_pixel_bar() {
    let h = honest();
    let engine = engine();
    let tok = tokenizer(&h);
    for job in h.jobs.iter().take(3) {
        let reference = reference_image(&rerun(&engine, job, PromptEncoding::TokenIds(&tok), NoiseDType::F32).unwrap()).unwrap();
        let fewer = ImageJob { steps: job.steps - 1, ..job.clone() };
        let cheat = reference_image(&rerun(&engine, &fewer, PromptEncoding::TokenIds(&tok), NoiseDType::F32).unwrap()).unwrap();
        let e = compare_rgb(&cheat, &reference);
        // The structure alone lets it through; the pixels do not.
        assert!(ImageThresholds::STRUCTURAL.judge(e).holds(), "{e}");
        let v = ImageThresholds::DEFAULT.judge(e);
        let ImageVerdict::Rejected { reasons, .. } = &v else {
            panic!("{} steps for {} held: {}", fewer.steps, job.steps, v.explain());
        };
        assert!(reasons.iter().any(|r| matches!(r, ImageReason::MeanDifference { .. })), "{reasons:?}");
    }
}

#[test]
fn check_tries_f16_noise_and_rejects_another_jobs_image() {
    let h = honest();
    let engine = engine();
    let tok = tokenizer(&h);
    let th = PrecisionBars::NETWORK;
    for i in 0..3 {
        let job = &h.jobs[i];
        // An f16 miner's image holds through the second precision tried.
        let (p, v) = check_rgb(&engine, job, PromptEncoding::TokenIds(&tok), (64, 64, h.half[i].clone()), &th).unwrap();
        assert!(v.holds() && p == Precision::F16, "job {i}: {p} {}", v.explain());
        // The image of another job (another seed, prompt and steps) does not.
        let other = h.f32[(i + 1) % h.jobs.len()].clone();
        let (_, v) = check_rgb(&engine, job, PromptEncoding::TokenIds(&tok), (64, 64, other), &th).unwrap();
        assert!(matches!(v, ImageVerdict::Rejected { .. }), "job {i}: {}", v.explain());
        assert!(v.explain().contains("PSNR"), "{}", v.explain());
    }
    // A claimed buffer of the wrong length is a typed error naming it.
    let err = check_rgb(&engine, &h.jobs[0], PromptEncoding::TokenIds(&tok), (64, 64, vec![0; 10]), &th).unwrap_err();
    assert!(err.to_string().contains("10 bytes"), "{err}");
}
