//! Opening a GGUF file with every size the file claims checked against the
//! file itself, so that a truncated or hostile file is an error, never a
//! multi-gigabyte allocation or a panic further down.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{Error, ErrorKind, Result};

pub struct Gguf {
    pub content: Content,
    pub reader: BufReader<File>,
    pub file_size: u64,
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        let file =
            File::open(path).map_err(|e| Error::new(ErrorKind::Io, format!("{shown}: {e}")))?;
        Self::from_file(file, &shown)
    }

    /// Reads a model held in memory.  The bytes are copied, once, into an
    /// anonymous in-memory file (Linux: `memfd_create`; elsewhere an
    /// unlinked temporary file), which the loaders then map as they map a
    /// model file: the caller's buffer is not needed after this returns.
    pub fn from_memory(data: &[u8]) -> Result<Self> {
        use std::io::Write;
        let io = |e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!(
                    "cannot copy the model ({} bytes) into memory: {e}",
                    data.len()
                ),
            )
        };
        let mut file = anonymous_file().map_err(io)?;
        file.write_all(data).map_err(io)?;
        Self::from_file(file, &"<memory>")
    }

    /// Reads an open file; `shown` names it in messages.
    pub fn from_file(file: File, shown: &dyn std::fmt::Display) -> Result<Self> {
        let meta = file
            .metadata()
            .map_err(|e| Error::new(ErrorKind::Io, format!("{shown}: {e}")))?;
        if meta.is_dir() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{shown}: is a directory"),
            ));
        }
        let file_size = meta.len();
        if file_size < 24 {
            return Err(Error::model(format!(
                "{shown}: not a GGUF file ({file_size} bytes, too short for a GGUF header)"
            )));
        }
        // The header is parsed from a memory map: candle's reader asks for
        // the stream position at every value, a system call on a file.
        let map = crate::runtime::mmap::Mmap::map(&file)
            .map_err(|e| Error::new(ErrorKind::Io, format!("{shown}: {e}")))?;
        let mut cursor = std::io::Cursor::new(map.bytes());
        // candle's reader checks lengths against the file, but divides by
        // `general.alignment` unchecked: a zero there panics, caught here.
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut cursor)));
        drop(map);
        let reader = BufReader::new(file);
        let content = match read {
            Ok(Ok(content)) => content,
            Ok(Err(e)) => {
                return Err(Error::model(format!(
                    "{shown}: not a readable GGUF file: {e}"
                )))
            }
            Err(_) => {
                return Err(Error::model(format!(
                    "{shown}: not a readable GGUF file: inconsistent header (general.alignment)"
                )))
            }
        };
        let gguf = Self {
            content,
            reader,
            file_size,
        };
        gguf.check_tensors().map_err(|e| e.context(shown))?;
        Ok(gguf)
    }

    /// Every tensor's claimed extent must lie inside the file, computed
    /// without overflow: candle trusts these numbers when it allocates.
    fn check_tensors(&self) -> Result<()> {
        match self.content.metadata.get("general.alignment") {
            Some(v)
                if v.to_u32()
                    .map(|a| a == 0 || !a.is_power_of_two())
                    .unwrap_or(true) =>
            {
                return Err(Error::model(format!(
                    "general.alignment must be a power of two, found {v:?}"
                )));
            }
            _ => {}
        }
        for (name, info) in &self.content.tensor_infos {
            let elems = info
                .shape
                .dims()
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            let block = info.ggml_dtype.block_size() as u64;
            let bytes = elems
                .filter(|e| e % block == 0)
                .and_then(|e| (e / block).checked_mul(info.ggml_dtype.type_size() as u64));
            let end = bytes.and_then(|b| {
                self.content
                    .tensor_data_offset
                    .checked_add(info.offset)?
                    .checked_add(b)
            });
            match end {
                Some(end) if end <= self.file_size => {}
                _ => {
                    return Err(Error::model(format!(
                        "tensor '{name}' (shape {:?}, {:?}) does not fit in the file ({} bytes); the file is truncated or corrupt",
                        info.shape.dims(),
                        info.ggml_dtype,
                        self.file_size
                    )))
                }
            }
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        self.get(key)?.to_string().ok().map(String::as_str)
    }

    /// An unsigned integer of any width; negative or non-integer values are
    /// treated as absent.
    pub fn uint(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            Value::U8(v) => Some(*v as u64),
            Value::U16(v) => Some(*v as u64),
            Value::U32(v) => Some(*v as u64),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    pub fn float(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            _ => None,
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.to_bool().ok()
    }

    /// A required unsigned integer, in `1..=max`.
    pub fn require_uint(&self, key: &str, max: u64) -> Result<u64> {
        match self.uint(key) {
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(v) => Err(Error::model(format!(
                "metadata {key} = {v} is outside the supported range 1..={max}"
            ))),
            None => Err(Error::model(format!("metadata {key} is missing"))),
        }
    }

    pub fn string_array(&self, key: &str) -> Option<Vec<String>> {
        let values = self.get(key)?.to_vec().ok()?;
        values.iter().map(|v| v.to_string().ok().cloned()).collect()
    }

    pub fn int_array(&self, key: &str) -> Option<Vec<i64>> {
        let values = self.get(key)?.to_vec().ok()?;
        values
            .iter()
            .map(|v| match v {
                Value::I32(x) => Some(*x as i64),
                Value::U32(x) => Some(*x as i64),
                Value::I8(x) => Some(*x as i64),
                Value::U8(x) => Some(*x as i64),
                Value::I16(x) => Some(*x as i64),
                Value::U16(x) => Some(*x as i64),
                Value::I64(x) => Some(*x),
                _ => None,
            })
            .collect()
    }

    pub fn float_array(&self, key: &str) -> Option<Vec<f32>> {
        let values = self.get(key)?.to_vec().ok()?;
        values
            .iter()
            .map(|v| match v {
                Value::F32(x) => Some(*x),
                Value::F64(x) => Some(*x as f32),
                _ => None,
            })
            .collect()
    }

    pub fn architecture(&self) -> Result<&str> {
        self.string("general.architecture")
            .ok_or_else(|| Error::model("metadata general.architecture is missing"))
    }

    /// The file's quantization as llama.cpp names it (`Q4_K_M`, `Q4_1`),
    /// from `general.file_type`; the tensor type holding most weights when
    /// the file does not say (or says something unknown).
    pub fn file_type(&self) -> String {
        self.uint("general.file_type")
            .and_then(file_type_name)
            .map(str::to_string)
            .unwrap_or_else(|| self.dominant_type())
    }

    /// The tensor type holding most weights, e.g. "Q4_1".
    pub fn dominant_type(&self) -> String {
        let mut count: std::collections::HashMap<String, u64> = Default::default();
        for t in self.content.tensor_infos.values() {
            *count.entry(format!("{:?}", t.ggml_dtype)).or_default() += t.shape.elem_count() as u64;
        }
        count
            .into_iter()
            .max_by_key(|(name, n)| (*n, name.clone()))
            .map(|(name, _)| name)
            .unwrap_or_default()
    }

    /// Sum of the element counts of all tensors.
    pub fn parameter_count(&self) -> u64 {
        self.content
            .tensor_infos
            .values()
            .map(|t| t.shape.elem_count() as u64)
            .sum()
    }
}

/// A file with no name that lives as long as it is open.
#[cfg(target_os = "linux")]
fn anonymous_file() -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: a valid C string; the returned descriptor is ours alone.
    let fd = unsafe { libc::memfd_create(c"zeph-llm-model".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A file with no name that lives as long as it is open.
#[cfg(not(target_os = "linux"))]
fn anonymous_file() -> std::io::Result<File> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("zeph-llm-model-{}-{n}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// llama.cpp's `llama_ftype` numbers (`general.file_type`) with the names its
/// quantize tool and model files use.  Numbers llama.cpp has retired (4-6,
/// 33-35) have no name.
pub fn file_type_name(file_type: u64) -> Option<&'static str> {
    // llama.cpp marks a file type it guessed with this bit.
    const GUESSED: u64 = 1024;
    Some(match file_type & !GUESSED {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::file_type_name;

    #[test]
    fn file_types_have_llama_cpp_names() {
        assert_eq!(file_type_name(3), Some("Q4_1"));
        assert_eq!(file_type_name(15), Some("Q4_K_M"));
        assert_eq!(file_type_name(7), Some("Q8_0"));
        assert_eq!(file_type_name(32), Some("BF16"));
        assert_eq!(file_type_name(1024 + 15), Some("Q4_K_M"));
        assert_eq!(file_type_name(4), None);
        assert_eq!(file_type_name(999), None);
    }
}
