//! The registry files parse, and the look-ups a miner needs answer from them.

use heurist_protocol::{ModelType, ProtocolError, Registry};

#[test]
fn every_registry_file_parses() {
    let dir = crate::data("heurist-models");
    for name in ["models.json", "models-new.json", "models-2024-07.json", "lora.json", "lora-new.json", "vae.json"] {
        let r = Registry::from_file(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(r.entries().count() > 0, "{name}");
        for e in r.entries() {
            if let Some(c) = e.checksum_bytes() {
                c.unwrap_or_else(|err| panic!("{name} {}: {err}", e.name));
            }
        }
    }
    Registry::from_dir(&dir).unwrap();
}

#[test]
fn look_ups() {
    let r = Registry::bundled().unwrap();
    // A composite's base, its family, its defaults (its own), its checksum.
    assert_eq!(r.base_of("PepeXL").unwrap().name, "AAMXLAnimeMix");
    assert_eq!(r.get("PepeXL").unwrap().model_type, ModelType::CompositeXl);
    assert_eq!(r.lora_family("PepeXL").unwrap(), ModelType::Sdxl10);
    assert_eq!(r.get("PepeXL").unwrap().default_weight, Some(0.8));
    let sum = r.checksum_of("PepeXL").unwrap().unwrap();
    assert_eq!(hex::encode_upper(sum), r.get("PepeXL").unwrap().checksum.as_deref().unwrap());
    // A base model is its own base; a VAE look-up through the model.
    assert_eq!(r.base_of("AAMXLAnimeMix").unwrap().name, "AAMXLAnimeMix");
    let with_vae = r.models.iter().find(|m| m.vae.is_some()).unwrap();
    let vae = r.vae_for(&with_vae.name).unwrap().unwrap();
    assert_eq!(vae.model_type, ModelType::Vae);
    assert_eq!(Some(&vae.name), with_vae.vae.as_ref());
    // LoRAs name their family.
    let lora = &r.loras[0];
    assert!(matches!(r.lora_family(&lora.name).unwrap(), ModelType::Sd15 | ModelType::Sdxl10));
    // LLM entries keep their types.
    let llm = r.models.iter().find(|m| matches!(m.model_type, ModelType::Llm(_))).unwrap();
    assert!(llm.model_type.as_str().starts_with("llm"));
    // Defaults.
    let d = r.defaults_of("AAMXLAnimeMix").unwrap().unwrap();
    assert!(d.width.is_some() && d.num_inference_steps.is_some());
    // Unknown names are typed errors.
    assert!(matches!(r.get("NoSuchModel"), Err(ProtocolError::UnknownModel { .. })));
}

#[test]
fn unknown_fields_and_types_are_kept() {
    let json = br#"[{"name": "X", "type": "sd35", "new_field": {"a": 1}, "checksum": ""}]"#;
    let r = Registry::from_slices(json, None, None).unwrap();
    let e = &r.models[0];
    assert_eq!(e.model_type, ModelType::Other("sd35".into()));
    assert_eq!(e.extra["new_field"]["a"], 1);
    assert!(e.checksum_bytes().is_none());
    let back = serde_json::to_value(e).unwrap();
    assert_eq!(back["type"], "sd35");
    assert_eq!(back["new_field"]["a"], 1);
}
