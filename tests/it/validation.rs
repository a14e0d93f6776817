//! Every class of bad input gets a typed error before anything is encoded, and the cache (and
//! the output) keep their canary contents.

use crate::common::*;
use quantkv::*;

const NB: u32 = 8;
const BS: u32 = 16;
const HKV: u32 = 2;
const D: u32 = 64;
const HQ: u32 = 8;

struct Fixture {
    ctx: &'static Context,
    cfg: CacheConfig,
    cache: KvCache,
    k_canary: Vec<u8>,
    v_canary: Vec<u8>,
    kv_in: wgpu::Buffer,
    q: wgpu::Buffer,
    out: wgpu::Buffer,
    out_canary: Vec<u8>,
}

fn fixture() -> Option<Fixture> {
    let ctx = context()?;
    let cfg = CacheConfig {
        num_layers: 1,
        num_blocks: NB,
        block_size: BS,
        num_kv_heads: HKV,
        head_size: D,
        mode: KvQuantMode::None,
        dtype: Dtype::F16,
        ..Default::default()
    };
    let cache = KvCache::new(ctx, &cfg).unwrap();
    // Canary: every slot written with a distinct value.
    let slots: Vec<i32> = (0..(NB * BS) as i32).collect();
    let n = slots.len();
    let vals: Vec<f64> = (0..n * (HKV * D) as usize)
        .map(|i| (i % 1000) as f64 * 0.5 + 1.0)
        .collect();
    let kv = ctx.upload("canary", &Dtype::F16.encode(&vals));
    let plan = BatchPlan::new(
        ctx,
        &cfg,
        &StepInput {
            slot_mapping: &slots,
            ..Default::default()
        },
    )
    .unwrap();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let t = Tensor::new(&kv, Dtype::F16, [n as u32, HKV, D]);
    cache
        .reshape_and_cache(ctx, &mut enc, &plan, 0, t, t)
        .unwrap();
    ctx.queue.submit([enc.finish()]);
    let k_canary = ctx.read_buffer(cache.layer(0).unwrap().k()).unwrap();
    let v_canary = ctx.read_buffer(cache.layer(0).unwrap().v()).unwrap();
    assert!(k_canary.iter().any(|&b| b != 0));
    let kv_in = ctx.upload(
        "kv_in",
        &Dtype::F16.encode(&vec![-3.0; 4 * (HKV * D) as usize]),
    );
    let q = ctx.upload("q", &Dtype::F16.encode(&vec![0.25; 4 * (HQ * D) as usize]));
    let out_canary = Dtype::F16.encode(&vec![9.0; 4 * (HQ * D) as usize]);
    let out = ctx.upload("out", &out_canary);
    Some(Fixture {
        ctx,
        cfg,
        cache,
        k_canary,
        v_canary,
        kv_in,
        q,
        out,
        out_canary,
    })
}

impl Fixture {
    fn kv(&self, rows: u32) -> Tensor<'_> {
        Tensor::new(&self.kv_in, Dtype::F16, [rows, HKV, D])
    }

    /// Runs `f` (which must fail), submits whatever was recorded, and checks nothing changed.
    fn rejects(
        &self,
        what: &str,
        f: impl FnOnce(&Self, &mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Error {
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        let r = f(self, &mut enc);
        self.ctx.queue.submit([enc.finish()]);
        let err = match r {
            Ok(()) => panic!("{what}: accepted"),
            Err(e) => e,
        };
        eprintln!("{what}: {err}");
        assert_eq!(
            self.ctx
                .read_buffer(self.cache.layer(0).unwrap().k())
                .unwrap(),
            self.k_canary,
            "{what}: K cache touched"
        );
        assert_eq!(
            self.ctx
                .read_buffer(self.cache.layer(0).unwrap().v())
                .unwrap(),
            self.v_canary,
            "{what}: V cache touched"
        );
        assert_eq!(
            self.ctx.read_buffer(&self.out).unwrap(),
            self.out_canary,
            "{what}: output touched"
        );
        err
    }

    /// [`Fixture::rejects`] for an attention call on 4 query rows with `step` and `params`.
    fn rejects_step(
        &self,
        what: &str,
        step: &StepInput<'_>,
        params: &AttentionParams<'_>,
    ) -> Error {
        self.rejects(what, |fx, enc| {
            fx.attend(enc, step, fx.qt(4), fx.ot(4), params)
        })
    }

    fn write(
        &self,
        enc: &mut wgpu::CommandEncoder,
        step: &StepInput<'_>,
        key: Tensor<'_>,
        value: Tensor<'_>,
    ) -> Result<()> {
        let plan = BatchPlan::new(self.ctx, &self.cfg, step)?;
        self.cache
            .reshape_and_cache(self.ctx, enc, &plan, 0, key, value)
    }

    fn attend(
        &self,
        enc: &mut wgpu::CommandEncoder,
        step: &StepInput<'_>,
        q: Tensor<'_>,
        out: Tensor<'_>,
        params: &AttentionParams<'_>,
    ) -> Result<()> {
        let plan = BatchPlan::new(self.ctx, &self.cfg, step)?;
        self.cache.unified_attention(
            self.ctx,
            enc,
            &Attention {
                plan: &plan,
                layer: self.cache.layer(0).unwrap(),
                q,
                out,
                params,
            },
        )
    }

    fn qt(&self, rows: u32) -> Tensor<'_> {
        Tensor::new(&self.q, Dtype::F16, [rows, HQ, D])
    }

    fn ot(&self, rows: u32) -> Tensor<'_> {
        Tensor::new(&self.out, Dtype::F16, [rows, HQ, D])
    }
}

fn params() -> AttentionParams<'static> {
    AttentionParams {
        num_q_heads: HQ,
        softmax_scale: 0.125,
        ..Default::default()
    }
}

/// A valid 2-sequence step: 3 query tokens + 1 decode token.
fn good_step() -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    (vec![0, 3, 4], vec![20, 5], vec![1, 2, 3, 0])
}

fn is_invalid(e: &Error, what: &str) -> bool {
    matches!(e, Error::InvalidArgument { what: w, .. } if *w == what)
}

#[test]
fn write_path_rejections_leave_the_cache_untouched() {
    let Some(fx) = fixture() else { return };
    let e = fx.rejects("slot past the pool", |fx, enc| {
        fx.write(
            enc,
            &StepInput {
                slot_mapping: &[0, (NB * BS) as i32],
                ..Default::default()
            },
            fx.kv(2),
            fx.kv(2),
        )
    });
    assert!(is_invalid(&e, "slot_mapping"));
    let e = fx.rejects("slot written twice", |fx, enc| {
        fx.write(
            enc,
            &StepInput {
                slot_mapping: &[5, -1, 5],
                ..Default::default()
            },
            fx.kv(3),
            fx.kv(3),
        )
    });
    assert!(is_invalid(&e, "slot_mapping"));
    let e = fx.rejects("wrong kv heads", |fx, enc| {
        let t = Tensor::new(&fx.kv_in, Dtype::F16, [2, HKV * 2, D / 2]);
        fx.write(
            enc,
            &StepInput {
                slot_mapping: &[0, 1],
                ..Default::default()
            },
            t,
            t,
        )
    });
    assert!(matches!(e, Error::ShapeMismatch { what: "key", .. }));
    let e = fx.rejects("dtype mismatch", |fx, enc| {
        let t = Tensor::new(&fx.kv_in, Dtype::F32, [1, HKV, D]);
        fx.write(
            enc,
            &StepInput {
                slot_mapping: &[0],
                ..Default::default()
            },
            t,
            t,
        )
    });
    assert!(is_invalid(&e, "key"));
    let e = fx.rejects("key rows != slot_mapping length", |fx, enc| {
        fx.write(
            enc,
            &StepInput {
                slot_mapping: &[0, 1, 2],
                ..Default::default()
            },
            fx.kv(2),
            fx.kv(2),
        )
    });
    assert!(matches!(e, Error::ShapeMismatch { .. }));
    let e = fx.rejects("buffer smaller than its shape", |fx, enc| {
        fx.write(
            enc,
            &StepInput {
                slot_mapping: &[0, 1, 2, 3, 4, 5],
                ..Default::default()
            },
            fx.kv(6),
            fx.kv(6),
        )
    });
    assert!(matches!(e, Error::InvalidBuffer { what: "key", .. }));
    let e = fx.rejects("buffer without STORAGE usage", |fx, enc| {
        let b = fx.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 1 << 12,
            usage: wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let t = Tensor::new(&b, Dtype::F16, [1, HKV, D]);
        fx.write(
            enc,
            &StepInput {
                slot_mapping: &[0],
                ..Default::default()
            },
            t,
            t,
        )
    });
    assert!(matches!(e, Error::InvalidBuffer { .. }));
    let e = fx.rejects("plan made for another cache", |fx, enc| {
        let other = CacheConfig {
            num_blocks: NB * 2,
            ..fx.cfg
        };
        let plan = BatchPlan::new(
            fx.ctx,
            &other,
            &StepInput {
                slot_mapping: &[0],
                ..Default::default()
            },
        )?;
        fx.cache
            .reshape_and_cache(fx.ctx, enc, &plan, 0, fx.kv(1), fx.kv(1))
    });
    assert!(is_invalid(&e, "plan"));
    let e = fx.rejects("layer out of range", |fx, enc| {
        let plan = BatchPlan::new(
            fx.ctx,
            &fx.cfg,
            &StepInput {
                slot_mapping: &[0],
                ..Default::default()
            },
        )?;
        fx.cache
            .reshape_and_cache(fx.ctx, enc, &plan, 1, fx.kv(1), fx.kv(1))
    });
    assert!(is_invalid(&e, "layer"));
}

#[test]
fn attention_rejections_leave_cache_and_output_untouched() {
    let Some(fx) = fixture() else { return };
    let (cu, su, bt) = good_step();
    let step = |cu: &'static [i32], su: &'static [i32], bt: &'static [i32], stride| StepInput {
        cu_seqlens_q: cu,
        seqused_k: su,
        block_table: bt,
        block_table_stride: stride,
        ..Default::default()
    };
    // The good step works (so the rejections below are about what they change).
    {
        let mut enc = fx.ctx.device.create_command_encoder(&Default::default());
        let scratch = fx.ctx.zeroed("scratch", 4 * (HQ * D * 2) as u64);
        let plan = BatchPlan::new(
            fx.ctx,
            &fx.cfg,
            &StepInput {
                cu_seqlens_q: &cu,
                seqused_k: &su,
                block_table: &bt,
                block_table_stride: 2,
                ..Default::default()
            },
        )
        .unwrap();
        fx.cache
            .unified_attention(
                fx.ctx,
                &mut enc,
                &Attention {
                    plan: &plan,
                    layer: fx.cache.layer(0).unwrap(),
                    q: fx.qt(4),
                    out: Tensor::new(&scratch, Dtype::F16, [4, HQ, D]),
                    params: &params(),
                },
            )
            .unwrap();
        fx.ctx.queue.submit([enc.finish()]);
    }
    let p = params();
    let e = fx.rejects_step(
        "non-monotonic cu_seqlens_q",
        &step(&[0, 3, 2], &[20, 5], &[1, 2, 3, 0], 2),
        &p,
    );
    assert!(is_invalid(&e, "cu_seqlens_q"));
    let e = fx.rejects_step(
        "cu_seqlens_q not starting at 0",
        &step(&[1, 3, 4], &[20, 5], &[1, 2, 3, 0], 2),
        &p,
    );
    assert!(is_invalid(&e, "cu_seqlens_q"));
    let e = fx.rejects_step(
        "cu_seqlens_q of the wrong length",
        &step(&[0, 3], &[20, 5], &[1, 2, 3, 0], 2),
        &p,
    );
    assert!(matches!(
        e,
        Error::ShapeMismatch {
            what: "cu_seqlens_q",
            ..
        }
    ));
    let e = fx.rejects_step(
        "seqused_k shorter than the query",
        &step(&[0, 3, 4], &[2, 5], &[1, 2, 3, 0], 2),
        &p,
    );
    assert!(is_invalid(&e, "seqused_k"));
    let e = fx.rejects_step(
        "block table entry outside the pool",
        &step(&[0, 3, 4], &[20, 5], &[1, NB as i32, 3, 0], 2),
        &p,
    );
    assert!(is_invalid(&e, "block_table"));
    let e = fx.rejects_step(
        "negative block table entry",
        &step(&[0, 3, 4], &[20, 5], &[1, 2, -1, 0], 2),
        &p,
    );
    assert!(is_invalid(&e, "block_table"));
    let e = fx.rejects_step(
        "too few block table columns",
        &step(&[0, 3, 4], &[40, 5], &[1, 2, 3, 0], 2),
        &p,
    );
    assert!(is_invalid(&e, "block_table"));
    let e = fx.rejects("num_q_heads not a multiple of num_kv_heads", |fx, enc| {
        let p3 = AttentionParams {
            num_q_heads: 3,
            ..params()
        };
        let q = Tensor::new(&fx.q, Dtype::F16, [4, 3, D]);
        fx.attend(
            enc,
            &step(&[0, 3, 4], &[20, 5], &[1, 2, 3, 0], 2),
            q,
            q,
            &p3,
        )
    });
    assert!(is_invalid(&e, "num_q_heads"));
    let e = fx.rejects("q with fewer rows than the batch", |fx, enc| {
        fx.attend(
            enc,
            &step(&[0, 3, 4], &[20, 5], &[1, 2, 3, 0], 2),
            fx.qt(3),
            fx.ot(4),
            &p,
        )
    });
    assert!(matches!(e, Error::ShapeMismatch { what: "q", .. }));
    let e = fx.rejects("out aliases q", |fx, enc| {
        fx.attend(
            enc,
            &step(&[0, 3, 4], &[20, 5], &[1, 2, 3, 0], 2),
            fx.qt(4),
            fx.qt(4),
            &p,
        )
    });
    assert!(matches!(e, Error::Aliased { a: "q", b: "out" }), "{e}");
    let e = fx.rejects("non-finite softmax_scale", |fx, enc| {
        let bad = AttentionParams {
            softmax_scale: f32::NAN,
            ..params()
        };
        fx.attend(
            enc,
            &step(&[0, 3, 4], &[20, 5], &[1, 2, 3, 0], 2),
            fx.qt(4),
            fx.ot(4),
            &bad,
        )
    });
    assert!(is_invalid(&e, "softmax_scale"));
}

#[test]
fn config_rejections() {
    for d in [0, 24, 40 + 1, 272, 512 + 16] {
        let cfg = CacheConfig {
            num_layers: 1,
            num_blocks: 4,
            block_size: 16,
            num_kv_heads: 1,
            head_size: d,
            mode: KvQuantMode::None,
            dtype: Dtype::F16,
            ..Default::default()
        };
        assert!(
            matches!(cfg.validate(), Err(Error::UnsupportedHeadDim { got, .. }) if got == d),
            "head size {d}"
        );
    }
    for d in (32..=256).step_by(16) {
        let cfg = CacheConfig {
            num_layers: 1,
            num_blocks: 4,
            block_size: 16,
            num_kv_heads: 1,
            head_size: d,
            mode: KvQuantMode::None,
            dtype: Dtype::F16,
            ..Default::default()
        };
        cfg.validate().unwrap();
    }
    let cfg = CacheConfig {
        num_layers: 1,
        num_blocks: 4,
        block_size: 0,
        num_kv_heads: 1,
        head_size: 64,
        mode: KvQuantMode::None,
        dtype: Dtype::F16,
        ..Default::default()
    };
    assert!(matches!(
        cfg.validate(),
        Err(Error::InvalidArgument {
            what: "block_size",
            ..
        })
    ));
}
