//! Reading a GGUF file (versions 2 and 3) from a memory map.  Every count
//! and length the file claims is checked against the bytes that remain
//! before anything is allocated or skipped, and every tensor's extent
//! against the file, so that a truncated or hostile file is an error with a
//! message, never a panic or a huge allocation.
//!
//! Scalar metadata is decoded when the file is opened; arrays (the token
//! list, scores, merges: hundreds of thousands of entries) stay a view into
//! the map, walked once to find their end and decoded when asked for.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::runtime::mmap::Mmap;
use crate::runtime::quant::WType;

/// `GGUF` read as a little-endian u32.
const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays in arrays read (real files have none).
const MAX_NESTING: usize = 16;
/// Most dimensions a tensor has (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: usize = 4;

/// The type of a metadata value (the numbers are GGUF's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_gguf(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// Bytes of one value, for the fixed-size types.
    fn fixed_size(self) -> Option<usize> {
        Some(match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
            Self::String | Self::Array => return None,
        })
    }

    /// Fewest bytes one value of the type takes: a string its u64 length,
    /// an array its element type and u64 count.
    fn min_size(self) -> usize {
        match self {
            Self::String => 8,
            Self::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        }
    }
}

/// A metadata value.  Strings are decoded (lossily, as UTF-8, trailing NULs
/// dropped: some writers add one); arrays are a view into the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    /// Any non-zero byte is true.
    Bool(bool),
    String(String),
    Array(Array),
}

/// An array value: `len` elements of type `ty`, held in the map at
/// `start..end` (checked when the file was opened).  [`Gguf::items`]
/// decodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Array {
    pub ty: ValueType,
    pub len: usize,
    start: usize,
    end: usize,
}

/// Where a tensor lies and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Outermost dimension first (`[rows, columns]` for a matrix): the
    /// file stores them innermost first.
    pub dims: Vec<usize>,
    pub ty: WType,
    /// Offset of the data from [`Gguf::data_offset`].
    pub offset: u64,
    /// Element count (the product of `dims`, checked when read).
    pub elements: u64,
    /// Bytes of the data.
    pub bytes: u64,
}

pub struct Gguf {
    file: File,
    map: Mmap,
    file_size: u64,
    version: u32,
    metadata: HashMap<String, Value>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

/// What the header of a GGUF file says, read from its bytes.
struct Header {
    version: u32,
    metadata: HashMap<String, Value>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

/// A cursor over the file's bytes; every read is checked against what
/// remains.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

fn bad(msg: String) -> Error {
    Error::model(msg)
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(bad(format!(
                "{} needs {n} bytes at byte {}, only {} remain (truncated file?)",
                what(),
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count of items each at least `min_size` bytes long, which must
    /// therefore fit in what remains.
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let most = (self.remaining() / min_size.max(1)) as u64;
        if n > most {
            return Err(bad(format!(
                "{} claims {n} entries at byte {at}, more than the {} bytes left can hold",
                what(),
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    /// The bytes of a string (u64 length, then the bytes).
    fn string_bytes(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let n = self.count(1, what)?;
        self.take(n, what)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        self.string_bytes(what).map(|b| decode_str(b).into_owned())
    }

    fn value_type(&mut self, what: &dyn Fn() -> String) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32(what)?;
        ValueType::from_gguf(id)
            .ok_or_else(|| bad(format!("{}: unknown value type {id} at byte {at}", what())))
    }

    /// One value of type `ty`; arrays are walked to their end (`depth`
    /// arrays deep already).
    fn value(&mut self, ty: ValueType, depth: usize, what: &dyn Fn() -> String) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::Bool => Value::Bool(self.array::<1>(what)?[0] != 0),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => Value::Array(self.array_value(depth + 1, what)?),
        })
    }

    /// An array's element type, count and elements, skipped over.
    fn array_value(&mut self, depth: usize, what: &dyn Fn() -> String) -> Result<Array> {
        if depth > MAX_NESTING {
            return Err(bad(format!(
                "{}: arrays nested more than {MAX_NESTING} deep",
                what()
            )));
        }
        let ty = self.value_type(what)?;
        let len = self.count(ty.min_size(), what)?;
        let start = self.pos;
        match ty.fixed_size() {
            // `count` checked len * size <= remaining.
            Some(size) => {
                self.take(len * size, what)?;
            }
            None if ty == ValueType::String => {
                for _ in 0..len {
                    self.string_bytes(what)?;
                }
            }
            None => {
                for _ in 0..len {
                    self.array_value(depth + 1, what)?;
                }
            }
        }
        Ok(Array {
            ty,
            len,
            start,
            end: self.pos,
        })
    }
}

/// GGUF strings are meant to be UTF-8 without a terminator; some files have
/// a trailing NUL, a few invalid bytes.
fn decode_str(b: &[u8]) -> Cow<'_, str> {
    let end = b.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(&b[..end])
}

/// GGUF's tensor type numbers that this library has no [`WType`] for, by
/// name, for the message that refuses them.
fn unsupported_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        4 | 5 => "Q4_2/Q4_3 (retired)",
        9 => "Q8_1",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

fn parse(bytes: &[u8]) -> Result<Header> {
    let mut r = Reader { bytes, pos: 0 };
    let header = || "the GGUF header".to_string();
    if r.take(4, &header)? != MAGIC {
        return Err(bad("not a GGUF file (no GGUF magic number)".into()));
    }
    let version = r.u32(&header)?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(bad(
                "GGUF version 1 is not supported (only versions 2 and 3)".into(),
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(bad(format!(
                "a big-endian GGUF file (version {}) is not supported",
                v.swap_bytes()
            )))
        }
        v => {
            return Err(bad(format!(
                "GGUF version {v} is not supported (only versions 2 and 3)"
            )))
        }
    }
    // A tensor info is at least a name length, a dimension count, a type
    // and an offset; a key-value pair a key length, a type and one byte.
    let tensor_count = r.count(24, &|| "the tensor count".into())?;
    let kv_count = r.count(13, &|| "the metadata count".into())?;

    // Counts are bounded by the bytes left, not by what memory allows: the
    // tables grow with the entries actually read.
    let mut metadata = HashMap::with_capacity(kv_count.min(1024));
    for i in 0..kv_count {
        let key = r.string(&|| format!("metadata key #{i}"))?;
        let what = || format!("metadata {key}");
        let ty = r.value_type(&what)?;
        let value = r.value(ty, 0, &what)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(bad(format!("metadata {key} appears twice")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match uint_of(v) {
            Some(a) if a.is_power_of_two() && a <= u32::MAX as u64 => a,
            _ => {
                return Err(bad(format!(
                    "general.alignment must be a power of two, found {v:?}"
                )))
            }
        },
    };

    let mut tensors = Vec::with_capacity(tensor_count.min(4096));
    let mut tensor_index = HashMap::with_capacity(tensor_count.min(4096));
    for i in 0..tensor_count {
        let name = r.string(&|| format!("tensor info #{i}"))?;
        let what = || format!("tensor {name}");
        let n_dims = r.u32(&what)? as usize;
        if n_dims > MAX_DIMS {
            return Err(bad(format!(
                "tensor {name} has {n_dims} dimensions, more than {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = r.u64(&what)?;
            dims.push(
                usize::try_from(d)
                    .map_err(|_| bad(format!("tensor {name}: dimension {d} is too large")))?,
            );
        }
        dims.reverse();
        let id = r.u32(&what)?;
        let ty = WType::from_gguf(id).ok_or_else(|| {
            bad(match unsupported_type_name(id) {
                Some(known) => format!(
                    "tensor {name} has type {known} (GGUF type {id}), which this library does not read"
                ),
                None => format!("tensor {name} has unknown GGUF type {id}"),
            })
        })?;
        let offset = r.u64(&what)?;
        let shape_error = || {
            bad(format!(
                "tensor {name} has an impossible shape {dims:?} for type {}",
                ty.name()
            ))
        };
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(shape_error)?;
        // Rows (the innermost dimension) are made of whole blocks.
        let row = dims.last().copied().unwrap_or(1) as u64;
        if !row.is_multiple_of(ty.block_len() as u64) {
            return Err(shape_error());
        }
        let bytes = (elements / ty.block_len() as u64)
            .checked_mul(ty.block_bytes() as u64)
            .ok_or_else(shape_error)?;
        if !offset.is_multiple_of(alignment) {
            return Err(bad(format!(
                "tensor {name}: offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        if tensor_index.insert(name.clone(), tensors.len()).is_some() {
            return Err(bad(format!("tensor {name} appears twice")));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            elements,
            bytes,
        });
    }

    let data_offset = (r.pos as u64).next_multiple_of(alignment);
    let file_size = bytes.len() as u64;
    for t in &tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.bytes));
        if !matches!(end, Some(end) if end <= file_size) {
            return Err(bad(format!(
                "tensor '{}' (shape {:?}, {}) does not fit in the file ({file_size} bytes); the file is truncated or corrupt",
                t.name,
                t.dims,
                t.ty.name()
            )));
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

/// An unsigned integer of any width; negative or non-integer values are
/// `None`.
fn uint_of(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(v) => Some(v as u64),
        Value::U16(v) => Some(v as u64),
        Value::U32(v) => Some(v as u64),
        Value::U64(v) => Some(v),
        Value::I8(v) => u64::try_from(v).ok(),
        Value::I16(v) => u64::try_from(v).ok(),
        Value::I32(v) => u64::try_from(v).ok(),
        Value::I64(v) => u64::try_from(v).ok(),
        _ => None,
    }
}

fn int_of(v: &Value) -> Option<i64> {
    match *v {
        Value::U8(v) => Some(v as i64),
        Value::U16(v) => Some(v as i64),
        Value::U32(v) => Some(v as i64),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I8(v) => Some(v as i64),
        Value::I16(v) => Some(v as i64),
        Value::I32(v) => Some(v as i64),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

/// The elements of an [`Array`], decoded one at a time.
pub struct Items<'a> {
    reader: Reader<'a>,
    ty: ValueType,
    left: usize,
}

impl Iterator for Items<'_> {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The array was walked when the file was opened: this cannot fail.
        self.reader.value(self.ty, 1, &|| String::new()).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        let file =
            File::open(path).map_err(|e| Error::new(ErrorKind::Io, format!("{shown}: {e}")))?;
        Self::from_file(file, &shown)
    }

    /// Reads the model file at `path` into memory: its bytes are copied,
    /// once, as `from_memory` copies a buffer, so that nothing maps the file
    /// itself and it may then be truncated, rewritten or deleted (a mapped
    /// file that shrinks makes the next read of a lost page raise SIGBUS).
    pub fn open_into_memory(path: &Path) -> Result<Self> {
        let shown = path.display();
        let file =
            File::open(path).map_err(|e| Error::new(ErrorKind::Io, format!("{shown}: {e}")))?;
        Self::copy_into_memory(file, &shown)
    }

    /// Reads a model held in memory (copied: the caller's buffer is not
    /// needed after this returns).
    pub fn from_memory(data: &[u8]) -> Result<Self> {
        Self::copy_into_memory(data, &"<memory>")
    }

    /// Copies the model's bytes from `source` into an anonymous in-memory
    /// file (Linux: `memfd_create`; elsewhere an unlinked temporary file),
    /// which the loaders then map as they map a model file.  The one way a
    /// model is held in memory, from a buffer or from a file alike.
    fn copy_into_memory(
        mut source: impl std::io::Read,
        shown: &dyn std::fmt::Display,
    ) -> Result<Self> {
        let io = |e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("{shown}: cannot copy the model into memory: {e}"),
            )
        };
        let mut copy = anonymous_file().map_err(io)?;
        std::io::copy(&mut source, &mut copy).map_err(io)?;
        Self::from_file(copy, shown)
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
        let map =
            Mmap::map(&file).map_err(|e| Error::new(ErrorKind::Io, format!("{shown}: {e}")))?;
        let h = parse(map.bytes())
            .map_err(|e| Error::model(format!("{shown}: not a readable GGUF file: {e}")))?;
        Ok(Self {
            file,
            map,
            file_size,
            version: h.version,
            metadata: h.metadata,
            tensors: h.tensors,
            tensor_index: h.tensor_index,
            alignment: h.alignment,
            data_offset: h.data_offset,
        })
    }

    /// The file, for loaders that map it themselves.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// `general.alignment`, or GGUF's default 32.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the tensor data starts in the file; tensor offsets count from
    /// here.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Where a tensor's data lies in the file (checked to lie inside it).
    pub fn tensor_range(&self, t: &TensorInfo) -> std::ops::Range<usize> {
        let start = (self.data_offset + t.offset) as usize;
        start..start + t.bytes as usize
    }

    /// A tensor's data, in the file's layout.
    pub fn tensor_data(&self, name: &str) -> Option<&[u8]> {
        let t = self.tensor(name)?;
        Some(&self.map.bytes()[self.tensor_range(t)])
    }

    /// The metadata keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.metadata.keys().map(String::as_str)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An unsigned integer of any width; negative or non-integer values are
    /// treated as absent.
    pub fn uint(&self, key: &str) -> Option<u64> {
        uint_of(self.get(key)?)
    }

    pub fn float(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            _ => None,
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
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

    /// The array under `key`, if that is what the key holds.
    pub fn array(&self, key: &str) -> Option<Array> {
        match self.get(key)? {
            Value::Array(a) => Some(*a),
            _ => None,
        }
    }

    /// The elements of an array of this file, decoded as they are read.
    pub fn items(&self, a: &Array) -> Items<'_> {
        Items {
            reader: Reader {
                bytes: &self.map.bytes()[..a.end],
                pos: a.start,
            },
            ty: a.ty,
            left: a.len,
        }
    }

    /// An array of strings (the token list, the merges).
    pub fn string_array(&self, key: &str) -> Option<Vec<String>> {
        Some(self.strings(key)?.map(Cow::into_owned).collect())
    }

    /// The strings of an array, borrowed from the file where they are valid
    /// UTF-8 (invalid sequences become U+FFFD, as in [`Gguf::string_array`]).
    pub fn strings(&self, key: &str) -> Option<impl Iterator<Item = Cow<'_, str>> + '_> {
        let a = self.array(key)?;
        if a.ty != ValueType::String {
            return None;
        }
        // Decoded here rather than through `items`: no `Value` per string.
        let mut r = Reader {
            bytes: &self.map.bytes()[..a.end],
            pos: a.start,
        };
        // The array was walked at open: its `len` strings are in the file.
        Some((0..a.len).map_while(move |_| r.string_bytes(&String::new).ok().map(decode_str)))
    }

    /// An array of integers of any width (each must fit an i64).
    pub fn int_array(&self, key: &str) -> Option<Vec<i64>> {
        let a = self.array(key)?;
        self.items(&a).map(|v| int_of(&v)).collect()
    }

    /// An array of f32 or f64 values.
    pub fn float_array(&self, key: &str) -> Option<Vec<f32>> {
        let a = self.array(key)?;
        self.items(&a)
            .map(|v| match v {
                Value::F32(x) => Some(x),
                Value::F64(x) => Some(x as f32),
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
        let mut count: HashMap<&'static str, u64> = HashMap::new();
        for t in &self.tensors {
            *count.entry(t.ty.name()).or_default() += t.elements;
        }
        count
            .into_iter()
            .max_by_key(|&(name, n)| (n, name))
            .map(|(name, _)| name.to_string())
            .unwrap_or_default()
    }

    /// Sum of the element counts of all tensors.
    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |sum, t| sum.saturating_add(t.elements))
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
    use super::*;

    /// The largest single allocation made on this thread since the last
    /// reset, to check that hostile counts allocate nothing large.
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local!(static LARGEST: Cell<usize> = const { Cell::new(0) });

        fn note(size: usize) {
            let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
        }

        pub struct Counting;

        // SAFETY: every call is passed to the system allocator unchanged.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                System.alloc(layout)
            }
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                System.alloc_zeroed(layout)
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
                note(new);
                System.realloc(ptr, layout, new)
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                System.dealloc(ptr, layout)
            }
        }

        #[global_allocator]
        static ALLOC: Counting = Counting;

        /// Runs `f` and returns what it returned with the largest
        /// allocation it made.
        pub fn largest<T>(f: impl FnOnce() -> T) -> (T, usize) {
            LARGEST.with(|c| c.set(0));
            let r = f();
            (r, LARGEST.with(|c| c.get()))
        }
    }

    /// A GGUF file written by hand, field by field.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn bytes(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend(b);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.u64(s.len() as u64).bytes(s.as_bytes())
        }
        /// Magic, version, tensor and metadata counts.
        fn header(version: u32, tensors: u64, kvs: u64) -> Self {
            let mut w = W::default();
            w.bytes(b"GGUF").u32(version).u64(tensors).u64(kvs);
            w
        }
        /// A key and its type.
        fn key(&mut self, k: &str, ty: u32) -> &mut Self {
            self.str(k).u32(ty)
        }
        fn pad_to(&mut self, align: usize) -> &mut Self {
            let n = self.0.len().next_multiple_of(align);
            self.0.resize(n, 0);
            self
        }
    }

    const V_U8: u32 = 0;
    const V_I8: u32 = 1;
    const V_U16: u32 = 2;
    const V_I16: u32 = 3;
    const V_U32: u32 = 4;
    const V_I32: u32 = 5;
    const V_F32: u32 = 6;
    const V_BOOL: u32 = 7;
    const V_STR: u32 = 8;
    const V_ARR: u32 = 9;
    const V_U64: u32 = 10;
    const V_I64: u32 = 11;
    const V_F64: u32 = 12;

    /// Every value type, nested arrays, alignment 64, a Q4_0 matrix of 2
    /// rows of 32 and an f32 vector of 3; the last tensor ends the file.
    fn sample() -> Vec<u8> {
        let mut w = W::header(3, 2, 18);
        w.key("general.architecture", V_STR).str("llama");
        w.key("general.alignment", V_U32).u32(64);
        w.key("u8", V_U8).bytes(&[200]);
        w.key("i8", V_I8).bytes(&[(-5i8) as u8]);
        w.key("u16", V_U16).bytes(&60000u16.to_le_bytes());
        w.key("i16", V_I16).bytes(&(-300i16).to_le_bytes());
        w.key("u32", V_U32).u32(4_000_000_000);
        w.key("i32", V_I32).bytes(&(-7i32).to_le_bytes());
        w.key("f32", V_F32).bytes(&0.5f32.to_le_bytes());
        w.key("bool", V_BOOL).bytes(&[1]);
        w.key("u64", V_U64).u64(1 << 40);
        w.key("i64", V_I64).bytes(&(-(1i64 << 40)).to_le_bytes());
        w.key("f64", V_F64).bytes(&1e-6f64.to_le_bytes());
        // A trailing NUL, as some writers add.
        w.key("str", V_STR).str("h\u{e9}\0");
        w.key("tokens", V_ARR)
            .u32(V_STR)
            .u64(3)
            .str("a")
            .str("bc")
            .str("");
        w.key("ints", V_ARR).u32(V_I16).u64(3);
        for v in [1i16, -2, 3] {
            w.bytes(&v.to_le_bytes());
        }
        w.key("floats", V_ARR).u32(V_F32).u64(2);
        w.bytes(&1.5f32.to_le_bytes())
            .bytes(&(-2.0f32).to_le_bytes());
        // [[1, 2], []] as u8 arrays.
        w.key("nested", V_ARR).u32(V_ARR).u64(2);
        w.u32(V_U8).u64(2).bytes(&[1, 2]);
        w.u32(V_U8).u64(0);
        // Tensor infos: dimensions innermost first.
        w.str("w").u32(2).u64(32).u64(2).u32(2).u64(0);
        w.str("v").u32(1).u64(3).u32(0).u64(64);
        w.pad_to(64);
        w.bytes(&[7u8; 36]).pad_to(64);
        for v in [1.0f32, 2.0, 3.0] {
            w.bytes(&v.to_le_bytes());
        }
        w.0
    }

    #[test]
    fn a_hand_built_file_reads_back() {
        let bytes = sample();
        let g = Gguf::from_memory(&bytes).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.architecture().unwrap(), "llama");
        assert_eq!(g.alignment(), 64);
        assert_eq!(g.get("u8"), Some(&Value::U8(200)));
        assert_eq!(g.get("i8"), Some(&Value::I8(-5)));
        assert_eq!(g.get("u16"), Some(&Value::U16(60000)));
        assert_eq!(g.get("i16"), Some(&Value::I16(-300)));
        assert_eq!(g.uint("u32"), Some(4_000_000_000));
        assert_eq!(g.get("i32"), Some(&Value::I32(-7)));
        assert_eq!(g.uint("i32"), None);
        assert_eq!(g.float("f32"), Some(0.5));
        assert_eq!(g.bool("bool"), Some(true));
        assert_eq!(g.uint("u64"), Some(1 << 40));
        assert_eq!(g.get("i64"), Some(&Value::I64(-(1 << 40))));
        assert_eq!(g.float("f64"), Some(1e-6));
        assert_eq!(g.string("str"), Some("h\u{e9}"));
        assert_eq!(g.string("u8"), None);
        assert_eq!(g.string("absent"), None);
        assert_eq!(
            g.string_array("tokens"),
            Some(vec!["a".into(), "bc".into(), "".into()])
        );
        assert_eq!(g.int_array("ints"), Some(vec![1, -2, 3]));
        assert_eq!(g.float_array("floats"), Some(vec![1.5, -2.0]));
        assert_eq!(g.string_array("ints"), None);
        assert_eq!(g.float_array("tokens"), None);
        let nested = g.array("nested").unwrap();
        assert_eq!((nested.ty, nested.len), (ValueType::Array, 2));
        let inner: Vec<Vec<Value>> = g
            .items(&nested)
            .map(|v| match v {
                Value::Array(a) => g.items(&a).collect(),
                other => panic!("not an array: {other:?}"),
            })
            .collect();
        assert_eq!(inner, vec![vec![Value::U8(1), Value::U8(2)], vec![]]);
        assert_eq!(g.keys().count(), 18);

        assert_eq!(g.tensors().len(), 2);
        let w = g.tensor("w").unwrap();
        assert_eq!(
            (w.dims.as_slice(), w.ty, w.offset),
            (&[2, 32][..], WType::Q4_0, 0)
        );
        assert_eq!((w.elements, w.bytes), (64, 36));
        assert_eq!(g.data_offset() % 64, 0);
        assert_eq!(g.tensor_data("w"), Some(&[7u8; 36][..]));
        let v = g.tensor("v").unwrap();
        assert_eq!((v.dims.as_slice(), v.ty), (&[3][..], WType::F32));
        assert_eq!(g.data_offset() + 64 + 12, bytes.len() as u64);
        let data: Vec<f32> = g
            .tensor_data("v")
            .unwrap()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(data, [1.0, 2.0, 3.0]);
        assert_eq!(g.parameter_count(), 67);
        assert_eq!(g.dominant_type(), "Q4_0");
        assert_eq!(g.file_type(), "Q4_0");
    }

    #[test]
    fn version_2_reads_too() {
        let mut bytes = sample();
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(parse(&bytes).unwrap().version, 2);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for n in 0..bytes.len() {
            match Gguf::from_memory(&bytes[..n]) {
                Ok(_) => panic!("{n} of {} bytes read as a file", bytes.len()),
                Err(e) => assert_eq!(e.kind, ErrorKind::Model, "{n} bytes: {e}"),
            }
        }
    }

    /// `parse` refuses the bytes, its message contains `needle`, and no
    /// allocation on the way was larger than 64 KiB.
    fn refused(bytes: &[u8], needle: &str) {
        let (r, largest) = counting::largest(|| parse(bytes).map(|h| h.version));
        match r {
            Ok(_) => panic!("read, expected an error with '{needle}'"),
            Err(e) => assert!(e.message.contains(needle), "'{needle}' not in: {e}"),
        }
        assert!(
            largest < 64 << 10,
            "allocated {largest} bytes for: {needle}"
        );
    }

    #[test]
    fn absurd_counts_are_errors_without_allocating() {
        let huge = 1u64 << 60;
        refused(&W::header(3, 0, huge).0, "metadata count claims");
        refused(&W::header(3, u64::MAX, 0).0, "tensor count claims");
        let mut w = W::header(3, 0, 1);
        w.u64(huge).bytes(&[0; 64]);
        refused(&w.0, "metadata key #0 claims");
        let mut w = W::header(3, 0, 1);
        w.key("a", V_STR).u64(huge).bytes(&[0; 64]);
        refused(&w.0, "metadata a claims");
        for ty in [V_U64, V_STR, V_ARR, V_U8] {
            let mut w = W::header(3, 0, 1);
            w.key("a", V_ARR).u32(ty).u64(huge).bytes(&[0; 64]);
            refused(&w.0, "metadata a claims");
        }
        // Arrays in arrays deeper than MAX_NESTING.
        let mut w = W::header(3, 0, 1);
        w.key("deep", V_ARR);
        for _ in 0..=MAX_NESTING {
            w.u32(V_ARR).u64(1);
        }
        w.u32(V_U8).u64(0);
        refused(&w.0, "nested more than");

        let tensor = |dims: &[u64], ty: u32, offset: u64| {
            let mut w = W::header(3, 1, 0);
            w.str("t").u32(dims.len() as u32);
            for &d in dims {
                w.u64(d);
            }
            w.u32(ty).u64(offset).pad_to(32).bytes(&[0; 64]);
            w.0
        };
        refused(&tensor(&[1; 5], 0, 0), "5 dimensions");
        let mut w = W::header(3, 1, 0);
        w.str("t").u32(u32::MAX).bytes(&[0; 64]);
        refused(&w.0, "dimensions");
        refused(&tensor(&[1 << 32; 3], 0, 0), "impossible shape");
        refused(&tensor(&[u64::MAX / 4, 8], 0, 0), "impossible shape");
        refused(&tensor(&[1 << 40], 0, 0), "does not fit");
        refused(&tensor(&[4], 0, u64::MAX - 31), "does not fit");
        refused(&tensor(&[16], 2, 0), "impossible shape");
        refused(&tensor(&[4], 0, 3), "not a multiple of the alignment");
    }

    #[test]
    fn bad_types_versions_and_alignments_are_named() {
        let mut w = W::header(3, 0, 1);
        w.key("a", 13).u32(0);
        refused(&w.0, "unknown value type 13");
        let mut w = W::header(3, 0, 1);
        w.key("a", V_ARR).u32(77).u64(0);
        refused(&w.0, "unknown value type 77");
        let tensor = |ty: u32| {
            let mut w = W::header(3, 1, 0);
            w.str("t").u32(1).u64(256).u32(ty).u64(0).bytes(&[0; 64]);
            w.0
        };
        refused(&tensor(16), "IQ2_XXS (GGUF type 16)");
        refused(&tensor(200), "unknown GGUF type 200");
        for (ty, value) in [
            (V_U32, 0u32.to_le_bytes().to_vec()),
            (V_U32, 48u32.to_le_bytes().to_vec()),
            (V_I32, (-32i32).to_le_bytes().to_vec()),
            (V_F32, 32f32.to_le_bytes().to_vec()),
            (V_U64, (1u64 << 40).to_le_bytes().to_vec()),
        ] {
            let mut w = W::header(3, 0, 1);
            w.key("general.alignment", ty).bytes(&value);
            refused(&w.0, "general.alignment must be a power of two");
        }
        refused(&W::header(1, 0, 0).0, "version 1 is not supported");
        refused(&W::header(4, 0, 0).0, "version 4 is not supported");
        refused(&W::header(3u32.swap_bytes(), 0, 0).0, "big-endian");
        refused(b"GGML\x03\0\0\0", "no GGUF magic");
        let mut w = W::header(3, 0, 2);
        w.key("a", V_U8).bytes(&[1]).key("a", V_U8).bytes(&[2]);
        refused(&w.0, "metadata a appears twice");
        let mut w = W::header(3, 2, 0);
        w.str("t").u32(1).u64(8).u32(0).u64(0);
        w.str("t").u32(1).u64(8).u32(0).u64(32);
        w.pad_to(32).bytes(&[0; 64]);
        refused(&w.0, "tensor t appears twice");
    }

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
