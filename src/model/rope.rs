//! Rotary position embedding: the cos and sin of each rotary pair at a
//! position, with the file's scaling (linear, or YaRN) and `rope_freqs`
//! divisors applied as llama.cpp's CPU rope applies them.  Both decoders
//! build their cos/sin tables from a [`Rope`], one per rotary base.

/// How rotary angles are scaled beyond the plain `pos * base^(-2i/d)`
/// (from `<arch>.rope.scaling.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    /// Interpolated angles are the position times this: 1 / factor (1
    /// without scaling).
    pub freq_scale: f32,
    /// YaRN's weight of the extrapolated (unscaled) angle in the pairs below
    /// the correction range; 0 is plain linear interpolation.
    pub ext_factor: f32,
    /// cos and sin are multiplied by this (and, when `ext_factor` is not 0,
    /// by YaRN's `1 + 0.1 ln(1 / freq_scale)` too).
    pub attn_factor: f32,
    /// Rotations over `orig_context` at which YaRN's ramp starts (fast,
    /// high-frequency end) and ends (slow end).
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// Context length before extension, which places the correction range.
    pub orig_context: usize,
}

impl RopeScaling {
    /// No scaling at all.
    pub const NONE: Self = Self::linear(1.0);

    /// Linear scaling: positions times `freq_scale`, nothing else.
    pub const fn linear(freq_scale: f32) -> Self {
        Self {
            freq_scale,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            orig_context: 0,
        }
    }
}

/// The pair index at which a pair makes `rotations` full turns over
/// `orig_context` positions (YaRN's correction dimension), unrounded.
fn corr_dim(dim: usize, orig_context: usize, rotations: f32, base: f32) -> f32 {
    let turn = rotations * 2.0 * std::f32::consts::PI;
    dim as f32 * (orig_context as f32 / turn).ln() / (2.0 * base.ln())
}

/// YaRN's correction range in pair indices: `[low, high]`, below which pairs
/// keep their extrapolated angle and above which they are interpolated (as
/// `ggml_rope_yarn_corr_dims` rounds and clamps it).
pub fn corr_dims(dim: usize, base: f32, s: &RopeScaling) -> [f32; 2] {
    let low = corr_dim(dim, s.orig_context, s.beta_fast, base).floor();
    let high = corr_dim(dim, s.orig_context, s.beta_slow, base).ceil();
    [low.max(0.0), high.min(dim as f32 - 1.0)]
}

/// One rotary base's frequencies, YaRN mix and magnitude, computed once per
/// model; [`Rope::cos_sin`] then costs two multiplications per pair more
/// than plain rope.
#[derive(Debug, Clone)]
pub struct Rope {
    /// Per pair, the unscaled frequency `base^(-2i/d) / rope_freqs[i]`.
    freqs: Vec<f32>,
    /// Per pair, the weight of the extrapolated angle (YaRN's ramp times
    /// `ext_factor`; 0 everywhere without YaRN).
    mix: Vec<f32>,
    freq_scale: f32,
    /// cos and sin multiplier.
    mscale: f32,
}

impl Rope {
    /// The pairs of a `dim`-wide rotary part with rotary base `base`;
    /// `divisors` are the file's `rope_freqs`, one per pair.
    pub fn new(dim: usize, base: f32, s: &RopeScaling, divisors: Option<&[f32]>) -> Self {
        let half = dim / 2;
        let freqs = (0..half)
            .map(|i| {
                let f = 1.0 / base.powf((2 * i) as f32 / dim as f32);
                divisors.map_or(f, |d| f / d[i])
            })
            .collect();
        let (mix, mscale) = if s.ext_factor != 0.0 {
            let [low, high] = corr_dims(dim, base, s);
            let ramp = |i: usize| {
                let y = (i as f32 - low) / (high - low).max(0.001);
                1.0 - y.clamp(0.0, 1.0)
            };
            let mix = (0..half).map(|i| ramp(i) * s.ext_factor).collect();
            let mscale = s.attn_factor * (1.0 + 0.1 * (1.0 / s.freq_scale).ln());
            (mix, mscale)
        } else {
            (vec![0.0; half], s.attn_factor)
        };
        Self {
            freqs,
            mix,
            freq_scale: s.freq_scale,
            mscale,
        }
    }

    /// Number of rotary pairs.
    pub fn pairs(&self) -> usize {
        self.freqs.len()
    }

    /// cos and sin (times the magnitude scale) of pair `i` at `pos`.
    #[inline]
    pub fn cos_sin(&self, pos: usize, i: usize) -> (f32, f32) {
        let p = pos as f32;
        let (f, mix) = (self.freqs[i], self.mix[i]);
        // Without YaRN, mix is 0 and mscale 1: exactly `p * freq_scale * f`'s
        // cos and sin, as before YaRN was applied.
        let interp = p * self.freq_scale * f;
        let extrap = p * f;
        let a = interp * (1.0 - mix) + extrap * mix;
        (a.cos() * self.mscale, a.sin() * self.mscale)
    }
}

/// A model's [`Rope`]s: one per distinct rotary base and scaling, and each
/// layer's.
#[derive(Debug, Clone)]
pub struct Ropes {
    pub bases: Vec<Rope>,
    pub of_layer: Vec<usize>,
}

impl Ropes {
    /// For `cfg`'s layers, with the file's `rope_freqs` divisors if any.
    pub fn new(cfg: &super::config::Config, divisors: Option<&[f32]>) -> Self {
        let mut distinct: Vec<(f32, RopeScaling)> = Vec::new();
        let of_layer = cfg
            .rope_base
            .iter()
            .zip(&cfg.rope_scaling)
            .map(
                |(&b, &s)| match distinct.iter().position(|&x| x == (b, s)) {
                    Some(i) => i,
                    None => {
                        distinct.push((b, s));
                        distinct.len() - 1
                    }
                },
            )
            .collect();
        let bases = distinct
            .iter()
            .map(|(b, s)| Rope::new(cfg.rope_dim, *b, s, divisors))
            .collect();
        Self { bases, of_layer }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// YaRN as its paper and reference implementation state it (Peng et
    /// al. 2023, "YaRN: Efficient Context Window Extension of Large
    /// Language Models"; `find_correction_range` and `linear_ramp_mask` of
    /// jquesnelle/yarn), in f64: the frequencies blended between
    /// interpolation (`/ factor`) and extrapolation by a ramp over the
    /// pair index, and cos/sin scaled by `0.1 ln(factor) + 1`.
    struct Published {
        inv_freq: Vec<f64>,
        mscale: f64,
    }

    #[allow(clippy::too_many_arguments)]
    fn published(
        dim: usize,
        base: f64,
        factor: f64,
        orig: f64,
        beta_fast: f64,
        beta_slow: f64,
        ext: f64,
        attn: f64,
        divisors: Option<&[f64]>,
    ) -> Published {
        let correction_dim = |rot: f64| {
            dim as f64 * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
        };
        let low = correction_dim(beta_fast).floor().max(0.0);
        let high = correction_dim(beta_slow).ceil().min(dim as f64 - 1.0);
        let span = if high == low { 0.001 } else { high - low };
        let inv_freq = (0..dim / 2)
            .map(|i| {
                let pos_freq =
                    base.powf(2.0 * i as f64 / dim as f64) * divisors.map_or(1.0, |d| d[i]);
                let extrapolation = 1.0 / pos_freq;
                let interpolation = 1.0 / (factor * pos_freq);
                let ramp = ((i as f64 - low) / span).clamp(0.0, 1.0);
                let extrapolation_weight = (1.0 - ramp) * ext;
                interpolation * (1.0 - extrapolation_weight) + extrapolation * extrapolation_weight
            })
            .collect();
        let mscale = if ext != 0.0 {
            attn * (0.1 * factor.ln() + 1.0)
        } else {
            attn
        };
        Published { inv_freq, mscale }
    }

    fn yarn(factor: f32, orig: usize) -> RopeScaling {
        RopeScaling {
            freq_scale: 1.0 / factor,
            ext_factor: 1.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            orig_context: orig,
        }
    }

    /// Largest |ours - published| over positions and pairs, of cos and sin.
    fn worst(rope: &Rope, want: &Published, positions: &[usize]) -> f64 {
        let mut worst = 0f64;
        for &p in positions {
            for i in 0..rope.pairs() {
                let (c, s) = rope.cos_sin(p, i);
                let a = p as f64 * want.inv_freq[i];
                worst = worst
                    .max((c as f64 - a.cos() * want.mscale).abs())
                    .max((s as f64 - a.sin() * want.mscale).abs());
            }
        }
        worst
    }

    const POSITIONS: [usize; 6] = [0, 1, 7, 100, 250, 511];

    #[test]
    fn the_correction_range_of_a_qwen_long_context_file() {
        // Qwen2.5 with YaRN: head 128, base 1e6, 32768 original positions.
        // By hand: 128 ln(32768 / (32 * 2 pi)) / (2 ln 1e6) = 23.6 and
        // 128 ln(32768 / (2 pi)) / (2 ln 1e6) = 39.65.
        let s = yarn(4.0, 32768);
        assert_eq!(corr_dims(128, 1e6, &s), [23.0, 40.0]);
        // A short original context puts the range below 0: clamped.
        assert_eq!(corr_dims(16, 1e4, &yarn(4.0, 128)), [0.0, 3.0]);
    }

    #[test]
    fn yarn_matches_the_published_formulas() {
        for (dim, base, factor, orig, divisors) in [
            (128usize, 1e6f32, 4.0f32, 32768usize, None::<Vec<f32>>),
            (64, 1e4, 8.0, 2048, None),
            (
                32,
                1e4,
                4.0,
                128,
                Some((0..16).map(|i| 1.0 + i as f32 * 0.5).collect()),
            ),
            (16, 5e5, 2.5, 4096, None),
        ] {
            let s = yarn(factor, orig);
            let d = divisors.as_deref();
            let rope = Rope::new(dim, base, &s, d);
            let d64: Option<Vec<f64>> = d.map(|d| d.iter().map(|&x| x as f64).collect());
            let want = published(
                dim,
                base as f64,
                factor as f64,
                orig as f64,
                32.0,
                1.0,
                1.0,
                1.0,
                d64.as_deref(),
            );
            let w = worst(&rope, &want, &POSITIONS);
            // f32 angles up to 511 carry a few 1e-5 of rounding; a wrong ramp
            // or magnitude is off by far more.
            assert!(w < 5e-4, "dim {dim} base {base} factor {factor}: {w}");
            // The magnitude is YaRN's, not 1.
            let (c, _) = rope.cos_sin(0, 0);
            let m = 0.1 * (factor as f64).ln() + 1.0;
            assert!((c as f64 - m).abs() < 1e-6, "{c} vs {m}");
        }
        // Other betas, a partial ext_factor and an attn_factor.
        let s = RopeScaling {
            freq_scale: 0.25,
            ext_factor: 0.5,
            attn_factor: 0.8,
            beta_fast: 16.0,
            beta_slow: 2.0,
            orig_context: 4096,
        };
        let rope = Rope::new(64, 1e4, &s, None);
        let want = published(64, 1e4, 4.0, 4096.0, 16.0, 2.0, 0.5, 0.8, None);
        let w = worst(&rope, &want, &POSITIONS);
        assert!(w < 5e-4, "{w}");
    }

    #[test]
    fn below_the_range_extrapolation_above_it_interpolation() {
        let (dim, base, factor) = (128usize, 1e6f32, 4.0f32);
        let s = yarn(factor, 32768);
        let [low, high] = corr_dims(dim, base, &s);
        let rope = Rope::new(dim, base, &s, None);
        let m = 0.1 * (factor as f64).ln() + 1.0;
        let p = 300usize;
        let (mut below, mut above) = (0, 0);
        for i in 0..dim / 2 {
            let theta = (base as f64).powf(-2.0 * i as f64 / dim as f64);
            let a = if (i as f32) <= low {
                below += 1;
                p as f64 * theta
            } else if (i as f32) >= high {
                above += 1;
                p as f64 * theta / factor as f64
            } else {
                continue;
            };
            let (c, sn) = rope.cos_sin(p, i);
            assert!((c as f64 - a.cos() * m).abs() < 1e-4, "pair {i}");
            assert!((sn as f64 - a.sin() * m).abs() < 1e-4, "pair {i}");
        }
        assert!(below > 10 && above > 10, "{below} {above}");
    }

    #[test]
    fn factor_1_or_ext_factor_0_is_plain_or_linear_rope() {
        let plain = |dim: usize, base: f32, scale: f32, p: usize, i: usize| {
            let a = p as f32 * scale * (1.0 / base.powf((2 * i) as f32 / dim as f32));
            (a.cos(), a.sin())
        };
        // No scaling: bit for bit the plain angles.
        let none = Rope::new(64, 1e4, &RopeScaling::NONE, None);
        // YaRN with factor 1: the same angles, magnitude 1.
        let one = Rope::new(64, 1e4, &yarn(1.0, 512), None);
        // ext_factor 0: linear interpolation, magnitude 1.
        let linear = Rope::new(
            64,
            1e4,
            &RopeScaling {
                ext_factor: 0.0,
                ..yarn(4.0, 512)
            },
            None,
        );
        for p in POSITIONS {
            for i in 0..32 {
                assert_eq!(none.cos_sin(p, i), plain(64, 1e4, 1.0, p, i));
                assert_eq!(linear.cos_sin(p, i), plain(64, 1e4, 0.25, p, i));
                let (c, s) = one.cos_sin(p, i);
                let (pc, ps) = plain(64, 1e4, 1.0, p, i);
                // interp * (1 - mix) + extrap * mix rounds differently from
                // either alone: within a few ulps of the angle (< 511).
                assert!((c - pc).abs() < 2e-4 && (s - ps).abs() < 2e-4);
            }
        }
    }
}
