//! Datasets for the learning experiments: a loader for the standard MNIST IDX files (raw or gzip)
//! from any directory, and the UCI 8×8 handwritten digits embedded in smartcore (1,797 images,
//! 64 pixels), so a fresh clone runs everything without downloads.
//!
//! Pixels are scaled to `[0, 1]` (MNIST bytes by `1/255`, the UCI digits' 0–16 counts by `1/16`).
//! Images are stored row-major, one contiguous row of `features` values per image.

use flate2::read::GzDecoder;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A labelled image set: `images[n * features + k]` is pixel `k` of image `n`, in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Pixels, row-major, `len = labels.len() * features`.
    pub images: Vec<f64>,
    /// Class of each image, in `0..classes`.
    pub labels: Vec<u8>,
    /// Pixels per image.
    pub features: usize,
    /// Number of classes.
    pub classes: usize,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `n`.
    pub fn image(&self, n: usize) -> &[f64] {
        &self.images[n * self.features..(n + 1) * self.features]
    }

    /// Number of images of each class.
    ///
    /// ```
    /// use synbal::train::data::Dataset;
    /// let d = Dataset { images: vec![0.0; 3], labels: vec![1, 0, 1], features: 1, classes: 2 };
    /// assert_eq!(d.class_counts(), vec![1, 2]);
    /// ```
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }

    /// The images whose indices are listed, in that order.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(idx.len() * self.features);
        for &n in idx {
            images.extend_from_slice(self.image(n));
        }
        Dataset {
            images,
            labels: idx.iter().map(|&n| self.labels[n]).collect(),
            features: self.features,
            classes: self.classes,
        }
    }
}

/// A train/test pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Training images.
    pub train: Dataset,
    /// Held-out test images.
    pub test: Dataset,
    /// Where the data came from (for reports).
    pub name: String,
}

/// Where the experiments take their data from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DataSource {
    /// The UCI 8×8 digits embedded in smartcore, split deterministically (see [`load_digits`]).
    #[default]
    Digits,
    /// A directory with the four standard MNIST IDX files (raw or `.gz`).
    MnistDir(PathBuf),
}

impl DataSource {
    /// MNIST from `dir` when a directory is given, the embedded digits otherwise.
    ///
    /// ```
    /// use synbal::train::data::DataSource;
    /// assert_eq!(DataSource::pick(None::<&str>), DataSource::Digits);
    /// ```
    pub fn pick(dir: Option<impl AsRef<Path>>) -> DataSource {
        match dir {
            Some(d) => DataSource::MnistDir(d.as_ref().to_path_buf()),
            None => DataSource::Digits,
        }
    }

    /// Loads the train/test split.
    pub fn load(&self) -> Result<Split, DataError> {
        match self {
            DataSource::Digits => Ok(load_digits()),
            DataSource::MnistDir(d) => load_mnist(d),
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Digits => f.write_str("UCI 8x8 digits (embedded)"),
            DataSource::MnistDir(d) => write!(f, "MNIST IDX files in {}", d.display()),
        }
    }
}

/// Why a dataset could not be loaded. Every variant names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DataError {
    /// Neither `name` nor `name.gz` exists in the directory.
    #[error("{dir}: neither {name} nor {name}.gz exists")]
    Missing {
        /// The directory searched.
        dir: PathBuf,
        /// The file name looked for.
        name: String,
    },
    /// Reading or decompressing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The header is wrong (magic number, dimensions).
    #[error("{path}: {message}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file ends before the data its header announces.
    #[error("{path}: truncated: header announces {expected} data bytes, file has {found}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes announced.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// Images and labels disagree in number.
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        /// The image file.
        images: PathBuf,
        /// Its image count.
        n_images: usize,
        /// The label file.
        labels: PathBuf,
        /// Its label count.
        n_labels: usize,
    },
    /// A label is outside 0..=9.
    #[error("{path}: label {label} of item {index} is not a digit 0-9")]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Item index.
        index: usize,
        /// The value.
        label: u8,
    },
}

/// Magic number of an IDX image file (unsigned bytes, 3 dimensions).
pub const IMAGE_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX label file (unsigned bytes, 1 dimension).
pub const LABEL_MAGIC: u32 = 0x0000_0801;

fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::new();
        GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads an IDX image file (raw or gzip, detected from the content): returns `(images scaled to
/// [0,1], count, rows·cols)`.
pub fn read_idx_images(path: &Path) -> Result<(Vec<f64>, usize, usize), DataError> {
    let b = read_bytes(path)?;
    let bad = |message: String| DataError::BadHeader {
        path: path.to_path_buf(),
        message,
    };
    if b.len() < 16 {
        return Err(bad(format!(
            "{} bytes: too short for an IDX image header (16 bytes)",
            b.len()
        )));
    }
    let magic = be_u32(&b, 0);
    if magic != IMAGE_MAGIC {
        return Err(bad(format!(
            "magic number {magic:#010x}, expected {IMAGE_MAGIC:#010x} (IDX unsigned-byte images)"
        )));
    }
    let (n, rows, cols) = (
        be_u32(&b, 4) as usize,
        be_u32(&b, 8) as usize,
        be_u32(&b, 12) as usize,
    );
    if rows == 0 || cols == 0 {
        return Err(bad(format!("image size {rows}x{cols}")));
    }
    let expected = n
        .checked_mul(rows * cols)
        .ok_or_else(|| bad(format!("{n} images of {rows}x{cols} overflow")))?;
    let found = b.len() - 16;
    if found < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    if found > expected {
        return Err(bad(format!(
            "{} bytes after the data announced by the header ({n} images of {rows}x{cols})",
            found - expected
        )));
    }
    let images = b[16..].iter().map(|&x| x as f64 / 255.0).collect();
    Ok((images, n, rows * cols))
}

/// Reads an IDX label file (raw or gzip); labels must be digits 0–9.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let b = read_bytes(path)?;
    let bad = |message: String| DataError::BadHeader {
        path: path.to_path_buf(),
        message,
    };
    if b.len() < 8 {
        return Err(bad(format!(
            "{} bytes: too short for an IDX label header (8 bytes)",
            b.len()
        )));
    }
    let magic = be_u32(&b, 0);
    if magic != LABEL_MAGIC {
        return Err(bad(format!(
            "magic number {magic:#010x}, expected {LABEL_MAGIC:#010x} (IDX unsigned-byte labels)"
        )));
    }
    let n = be_u32(&b, 4) as usize;
    let found = b.len() - 8;
    if found < n {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: n,
            found,
        });
    }
    if found > n {
        return Err(bad(format!(
            "{} bytes after the {n} labels announced by the header",
            found - n
        )));
    }
    let labels = b[8..].to_vec();
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(DataError::BadLabel {
            path: path.to_path_buf(),
            index,
            label,
        });
    }
    Ok(labels)
}

fn find(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::Missing {
        dir: dir.to_path_buf(),
        name: name.to_string(),
    })
}

fn load_pair(dir: &Path, images: &str, labels: &str) -> Result<Dataset, DataError> {
    let ip = find(dir, images)?;
    let lp = find(dir, labels)?;
    let (px, n, features) = read_idx_images(&ip)?;
    let lab = read_idx_labels(&lp)?;
    if lab.len() != n {
        return Err(DataError::CountMismatch {
            images: ip,
            n_images: n,
            labels: lp,
            n_labels: lab.len(),
        });
    }
    Ok(Dataset {
        images: px,
        labels: lab,
        features,
        classes: 10,
    })
}

/// Loads MNIST from `dir`: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each raw or with `.gz` appended.
/// Magic numbers, sizes and label ranges are checked; pixels are scaled by `1/255`.
pub fn load_mnist(dir: impl AsRef<Path>) -> Result<Split, DataError> {
    let dir = dir.as_ref();
    let train = load_pair(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?;
    let test = load_pair(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?;
    if train.features != test.features {
        return Err(DataError::BadHeader {
            path: dir.join("t10k-images-idx3-ubyte"),
            message: format!(
                "test images have {} pixels, training images {}",
                test.features, train.features
            ),
        });
    }
    Ok(Split {
        train,
        test,
        name: format!("MNIST ({})", dir.display()),
    })
}

/// Number of test images of the embedded digits split.
pub const DIGITS_TEST: usize = 360;

/// The UCI 8×8 digits embedded in smartcore 0.7 (1,797 images, 64 pixels with counts 0–16,
/// scaled by `1/16`), shuffled with `ChaCha8Rng::seed_from_u64(0)` and split into the first
/// 1,437 for training and the last [`DIGITS_TEST`] = 360 for testing. The split is the same on
/// every machine.
///
/// ```
/// let s = synbal::train::data::load_digits();
/// assert_eq!((s.train.len(), s.test.len(), s.train.features), (1437, 360, 64));
/// ```
pub fn load_digits() -> Split {
    let d = smartcore::dataset::digits::load_dataset();
    let all = Dataset {
        images: d
            .data
            .iter()
            .map(|&x| (x as f64 / 16.0).clamp(0.0, 1.0))
            .collect(),
        labels: d.target.iter().map(|&y| y as u8).collect(),
        features: d.num_features,
        classes: 10,
    };
    let mut idx: Vec<usize> = (0..all.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(0));
    let cut = all.len() - DIGITS_TEST;
    Split {
        train: all.subset(&idx[..cut]),
        test: all.subset(&idx[cut..]),
        name: "UCI 8x8 digits (embedded, 1437/360 split)".into(),
    }
}
