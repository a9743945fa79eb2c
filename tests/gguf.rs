//! Our GGUF reader on the two real test models: the metadata and tensor
//! facts published for them (their Hugging Face configurations), and, with the `reference` feature, everything it reads
//! compared with candle's GGUF reader.

mod common;

use common::model_path;
use zeph_llm::gguf::Gguf;
use zeph_llm::runtime::quant::WType;

#[test]
fn smollm2_reads() {
    let g = Gguf::open(&model_path("smollm2")).unwrap();
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.uint("llama.block_count"), Some(30));
    assert_eq!(g.uint("llama.embedding_length"), Some(576));
    assert_eq!(g.uint("llama.attention.head_count"), Some(9));
    assert_eq!(g.uint("llama.attention.head_count_kv"), Some(3));
    assert_eq!(g.uint("llama.context_length"), Some(8192));
    assert_eq!(g.string("tokenizer.ggml.model"), Some("gpt2"));
    let tokens = g.string_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[0], "<|endoftext|>");
    assert_eq!(tokens[1], "<|im_start|>");
    assert_eq!(g.uint("tokenizer.ggml.eos_token_id"), Some(2));
    assert_eq!(
        g.int_array("tokenizer.ggml.token_type").unwrap().len(),
        49152
    );
    assert!(g.string_array("tokenizer.ggml.merges").unwrap().len() > 40000);
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [49152, 576]);
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(g.data_offset() % g.alignment(), 0);
    assert_eq!(g.file_type(), "Q4_1");
}

#[test]
fn gemma3_reads() {
    let g = Gguf::open(&model_path("gemma3")).unwrap();
    assert_eq!(g.architecture().unwrap(), "gemma3");
    assert_eq!(g.uint("gemma3.block_count"), Some(18));
    assert_eq!(g.uint("gemma3.embedding_length"), Some(640));
    assert_eq!(g.uint("gemma3.context_length"), Some(32768));
    assert_eq!(g.uint("gemma3.attention.sliding_window"), Some(512));
    assert_eq!(g.string("tokenizer.ggml.model"), Some("llama"));
    let tokens = g.string_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 262144);
    assert_eq!(&tokens[..4], ["<pad>", "<eos>", "<bos>", "<unk>"]);
    assert_eq!(
        g.float_array("tokenizer.ggml.scores").unwrap().len(),
        262144
    );
    assert_eq!(g.uint("tokenizer.ggml.bos_token_id"), Some(2));
    assert_eq!(g.bool("tokenizer.ggml.add_bos_token"), Some(true));
    assert_eq!(g.bool("tokenizer.ggml.add_eos_token"), Some(false));
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [262144, 640]);
    assert_eq!(g.file_type(), "Q4_K_M");
    assert_eq!(g.uint("gemma3.attention.head_count"), Some(4));
    assert_eq!(g.uint("gemma3.attention.head_count_kv"), Some(1));
    assert!(g.tensors().iter().any(|t| t.ty == WType::Q4K));
}

/// Every key, value and tensor as candle's reader reads them.
#[cfg(feature = "reference")]
#[test]
fn both_models_read_as_candle_reads_them() {
    use candle_core::quantized::gguf_file::{Content, Value as C};
    use zeph_llm::gguf::Value;

    fn same(g: &Gguf, ours: &Value, theirs: &C) -> bool {
        match (ours, theirs) {
            (Value::U8(a), C::U8(b)) => a == b,
            (Value::I8(a), C::I8(b)) => a == b,
            (Value::U16(a), C::U16(b)) => a == b,
            (Value::I16(a), C::I16(b)) => a == b,
            (Value::U32(a), C::U32(b)) => a == b,
            (Value::I32(a), C::I32(b)) => a == b,
            (Value::U64(a), C::U64(b)) => a == b,
            (Value::I64(a), C::I64(b)) => a == b,
            (Value::F32(a), C::F32(b)) => a.to_bits() == b.to_bits(),
            (Value::F64(a), C::F64(b)) => a.to_bits() == b.to_bits(),
            (Value::Bool(a), C::Bool(b)) => a == b,
            (Value::String(a), C::String(b)) => a == b,
            (Value::Array(a), C::Array(b)) => {
                a.len == b.len() && g.items(a).zip(b).all(|(x, y)| same(g, &x, y))
            }
            _ => false,
        }
    }

    for model in ["smollm2", "gemma3"] {
        let path = model_path(model);
        let g = Gguf::open(&path).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let c = Content::read(&mut file).unwrap();
        assert_eq!(g.keys().count(), c.metadata.len(), "{model}");
        for (key, theirs) in &c.metadata {
            let ours = g
                .get(key)
                .unwrap_or_else(|| panic!("{model}: {key} missing"));
            assert!(same(&g, ours, theirs), "{model}: {key}");
        }
        assert_eq!(g.tensors().len(), c.tensor_infos.len(), "{model}");
        assert_eq!(g.data_offset(), c.tensor_data_offset, "{model}");
        for (name, t) in &c.tensor_infos {
            let ours = g.tensor(name).unwrap();
            assert_eq!(ours.dims, t.shape.dims(), "{model}: {name}");
            assert_eq!(ours.offset, t.offset, "{model}: {name}");
            assert_eq!(
                ours.ty.name().replace('_', ""),
                format!("{:?}", t.ggml_dtype).replace('_', "")
            );
            assert_eq!(
                ours.elements,
                t.shape.elem_count() as u64,
                "{model}: {name}"
            );
        }
    }
}
