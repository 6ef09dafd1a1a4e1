//! The step loop: schedule -> one batched forward -> sample -> stream deltas.
//!
//! `LlmEngine` owns every piece of mutable state (model, KV memory, scheduler, per-request
//! samplers and detokenizers). It is driven either in-process (`sluice generate`) or by the
//! engine thread behind `EngineHandle` (the server).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sluice_backend::sample::read_logprob_record;
use sluice_backend::{
    BackendError, DType, IdsReadback, LogitAdjust, LogprobAsk, SampleParams, Tensor, LOGPROB_RECORD,
};
use sluice_model::arch::Model;
use sluice_model::tokenizer::{IncrementalDecoder, Tokenizer};
use sluice_model::{BatchInput, KvCache};

use crate::kv::KvCacheManager;
use crate::metrics::{EngineMetrics, StepPhases};
use crate::sampling::{SampledToken, Sampler, SamplingParams};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerError, SchedulerOutput};
use crate::sequence::{FinishReason, SeqId, Sequence, PENDING_TOKEN};
use crate::spec::lookahead::{Lookahead, LookaheadConfig};
use crate::spec::verify::{verify_seq, VerifyScratch};
use crate::spec::{Proposer, SpecConfig, Speculator, VerifyFeedback};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid request: {message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("{0}")]
    Scheduler(#[from] SchedulerError),
    #[error("model error: {0}")]
    Model(#[from] sluice_model::ModelError),
    #[error("the engine has stopped")]
    Stopped,
    /// Speculative decoding misconfigured or failed (engine-side).
    #[error("speculative decoding: {0}")]
    Speculative(String),
}

impl EngineError {
    /// Errors caused by the request (400), as opposed to engine failures (500).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            EngineError::InvalidRequest { .. }
                | EngineError::Scheduler(
                    SchedulerError::ContextTooLong { .. }
                        | SchedulerError::ExceedsKvCache { .. }
                        | SchedulerError::EmptyPrompt
                        | SchedulerError::ZeroMaxTokens
                )
        )
    }
}

/// Engine sizing. `None` fields take defaults derived from the model and the machine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes for the KV cache; default: a quarter of available memory, at most 4 GiB.
    pub kv_cache_memory: Option<u64>,
    /// Exact number of blocks (overrides `kv_cache_memory`; tests use it).
    pub num_blocks: Option<usize>,
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    /// Longest prompt + output; default: the model's context length, capped at 8192.
    pub max_model_len: Option<usize>,
    pub enable_prefix_caching: bool,
    /// On a GPU, the fraction of device memory to use; the KV cache gets what the
    /// weights and activations leave (when `kv_cache_memory` is not set).
    pub gpu_memory_utilization: f64,
    /// KV cache element type (`--kv-cache-dtype`: F32, F16, BF16, Q8_0 or F8E4M3 on the
    /// CPU; F32, BF16 or F8E4M3 on CUDA); None = the device's default (F32 on the CPU).
    /// Sets how many tokens `kv_cache_memory` holds.
    pub kv_cache_dtype: Option<sluice_backend::DType>,
    /// Replay decode steps from recorded device graphs (CUDA graphs) where the device
    /// supports them; false runs every step op by op (`--enforce-eager`).
    pub step_graphs: bool,
    /// Overlapped steps: step N + 1 is scheduled and queued before the host reads step
    /// N's sampled ids (see `LlmEngine::step`). None = on for GPUs, off on the CPU
    /// (where the forward runs on the calling thread, so nothing overlaps); Some(true) on
    /// the CPU also samples with the device sampler there (tests of the mechanics).
    pub async_scheduling: Option<bool>,
    /// Sample with the device's sampler (`Device::sample`: only ids cross to the host)
    /// where a step allows it. None = on GPUs and with `async_scheduling`; the CPU's
    /// device sampler draws differently from the host sampler (same distribution).
    pub sample_on_device: Option<bool>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            kv_cache_memory: None,
            num_blocks: None,
            max_num_batched_tokens: 512,
            max_num_seqs: 64,
            max_model_len: None,
            enable_prefix_caching: true,
            gpu_memory_utilization: 0.9,
            kv_cache_dtype: None,
            step_graphs: true,
            async_scheduling: None,
            sample_on_device: None,
        }
    }
}

/// A request as the engine sees it: tokens and validated sampling parameters.
#[derive(Clone, Debug)]
pub struct EngineRequest {
    pub prompt_token_ids: Vec<u32>,
    pub params: SamplingParams,
    /// Separates prefix-cache entries (e.g. per tenant); None shares with everyone.
    pub cache_salt: Option<String>,
}

/// What one step produced for one request.
#[derive(Clone, Debug)]
pub struct RequestOutput {
    pub id: SeqId,
    /// Tokens sampled this step (several with speculative decoding).
    pub new_token_ids: Vec<u32>,
    /// Text completed by those tokens (held back while it could be a stop string).
    pub new_text: String,
    pub logprobs: Vec<SampledToken>,
    pub finished: Option<FinishReason>,
    pub num_prompt_tokens: usize,
    pub num_output_tokens: usize,
    pub num_cached_tokens: usize,
}

struct SeqState {
    params: SamplingParams,
    sampler: Sampler,
    detok: IncrementalDecoder,
    /// Text decoded but not yet emitted (may be the start of a stop string).
    pending: String,
    arrival: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

pub struct LlmEngine {
    model: Model,
    kv: KvCache,
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    states: HashMap<SeqId, SeqState>,
    next_id: u64,
    batch: BatchInput,
    logits: Vec<f32>,
    /// Ids sampled on the device (GPU only: only the ids cross to the host, not
    /// `rows x vocab` logits), for steps whose every token can be sampled there.
    device_ids_dev: Option<Tensor>,
    device_ids: Vec<i32>,
    /// The log-probability records of the step's asking sequences (`DeviceLogprobs`).
    logprob_records_dev: Option<Tensor>,
    /// This step's per-row sampling parameters and logit adjustments for the device.
    sample_rows: Vec<SampleParams>,
    sample_adjust: Vec<LogitAdjust>,
    sampled: Vec<Vec<u32>>,
    metrics: EngineMetrics,
    max_model_len: usize,
    /// Speculative decoding (None: off).
    spec: Option<Speculator>,
    verify_scratch: VerifyScratch,
    /// Lookahead decoding (None: off); exclusive with `spec`.
    lookahead: Option<Lookahead>,
    /// Overlapped steps (see `step`), from `EngineConfig::async_scheduling`.
    async_scheduling: bool,
    /// Sample on the device where the step allows (`EngineConfig::sample_on_device`).
    sample_on_device: bool,
    /// The step queued on the device whose ids the host has not read yet.
    in_flight: Option<InFlight>,
}

/// A step on the device whose sampled ids have not been read (overlapped steps).
struct InFlight {
    out: SchedulerOutput,
    readback: IdsReadback,
    /// Row of each token-sampling sequence in the step's ids.
    rows: HashMap<SeqId, u32>,
    logprobs: DeviceLogprobs,
    host_before: f64,
    forward: f64,
}

/// A step whose tokens or logits are on the host, to be finished.
struct Done {
    out: SchedulerOutput,
    on_device: bool,
    /// The ids sampled on the device (kept apart from `device_ids`, which a step
    /// resolved before this one is finished reads into).
    ids: Vec<i32>,
    logprobs: DeviceLogprobs,
    t0: Instant,
    t_forward: Instant,
    t_wait: Instant,
}

/// The sequences of a step sampled on the device that asked for log-probabilities, and
/// their records (`Device::logprobs`: the log-sum-exp, the sampled token's and the top
/// alternatives' log-probabilities of the raw logits, computed on the device after the
/// draw). The records come back with the ids: 168 bytes a sequence cross to the host,
/// not its logits row (vocabulary × 4 bytes), and overlapped steps keep overlapping.
#[derive(Default)]
struct DeviceLogprobs {
    /// (sequence, its row in the step's logits and ids, alternatives asked for), in the
    /// order of the records.
    seqs: Vec<(SeqId, usize, usize)>,
    records: Vec<f32>,
}

impl DeviceLogprobs {
    /// Each asking sequence's token (from the step's `ids`) with its log-probabilities.
    fn tokens(&self, ids: &[i32]) -> Result<HashMap<SeqId, SampledToken>, EngineError> {
        self.seqs
            .iter()
            .enumerate()
            .map(|(k, &(seq, row, n))| {
                let id = ids.get(row).and_then(|&i| u32::try_from(i).ok());
                let rec = self
                    .records
                    .get(k * LOGPROB_RECORD..(k + 1) * LOGPROB_RECORD);
                match (id, rec) {
                    (Some(id), Some(rec)) => {
                        let (logprob, top) = read_logprob_record(rec, n);
                        let token = SampledToken {
                            id,
                            logprob: Some(logprob),
                            top_logprobs: top,
                        };
                        Ok((seq, token))
                    }
                    _ => Err(EngineError::Model(sluice_model::ModelError::from(
                        BackendError::Shape(format!(
                            "device sampling: no id or log-probabilities kept for {seq}"
                        )),
                    ))),
                }
            })
            .collect()
    }
}

/// `slot`'s device buffer, grown to hold at least `len` values of `dtype` (a power of
/// two, at least 64). A buffer too small is dropped after a synchronization: queued work
/// (the previous step's ids or records) may still read it.
fn device_buffer<'a>(
    device: &sluice_backend::Device,
    slot: &'a mut Option<Tensor>,
    dtype: DType,
    len: usize,
) -> Result<&'a mut Tensor, EngineError> {
    if slot
        .as_ref()
        .is_some_and(|t| t.size_in_bytes() < dtype.row_bytes(len))
    {
        device
            .synchronize()
            .map_err(sluice_model::ModelError::from)?;
        *slot = None;
    }
    match slot {
        Some(t) => Ok(t),
        empty => Ok(empty.insert(
            device
                .zeros(dtype, &[len.max(64).next_power_of_two()])
                .map_err(sluice_model::ModelError::from)?,
        )),
    }
}

enum Launched {
    /// Nothing was scheduled.
    Nothing,
    /// Queued; its ids are read by a later `resolve`.
    Queued(InFlight),
    Done(Done),
}

/// Free memory as the OS reports it (Linux `MemAvailable`), if known.
fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Default KV cache bytes: on the CPU a quarter of available memory (at most 4 GiB); on a
/// GPU what `gpu_memory_utilization` of the card leaves after the weights (already
/// loaded) and a reserve for activations and cuBLAS workspaces.
fn default_kv_budget(model: &Model, cfg: &EngineConfig) -> Result<u64, EngineError> {
    match model.device() {
        sluice_backend::Device::Cpu(_) => {
            let avail = available_memory().unwrap_or(4 << 30);
            Ok((avail / 4).min(4 << 30))
        }
        sluice_backend::Device::Cuda(g) => {
            let (free, total) = g
                .memory_info()
                .map_err(|e| EngineError::Model(sluice_model::ModelError::from(e)))?;
            gpu_kv_budget(total as u64, free as u64, StepShape::of(&model.config), cfg)
        }
    }
}

/// What one step's activations and logits take per token and row.
#[derive(Clone, Copy)]
struct StepShape {
    /// Bytes of activations per token of a step: ~12 f32 buffers of hidden/ffn width (the
    /// run state's f32 buffers plus its two bf16 ones, `xb16` and `qkv16`, come to less
    /// for every preset).
    act_bytes_per_token: f64,
    vocab: usize,
}

impl StepShape {
    fn of(c: &sluice_model::ModelConfig) -> StepShape {
        StepShape {
            act_bytes_per_token: 4.0
                * (6.0 * c.hidden_size as f64
                    + 4.0 * c.intermediate_size as f64
                    + 2.0 * c.q_dim() as f64),
            vocab: c.vocab_size,
        }
    }
}

/// The KV cache's bytes on a GPU of `total` bytes with `free` left after the weights:
/// `gpu_memory_utilization` of the card, less what is in use and a reserve for one step's
/// activations (a full token budget), f32 logits for every sequence, and 1 GiB for
/// workspaces and context. An error that names each part when nothing is left.
fn gpu_kv_budget(
    total: u64,
    free: u64,
    shape: StepShape,
    cfg: &EngineConfig,
) -> Result<u64, EngineError> {
    let used = total.saturating_sub(free) as f64;
    let act = cfg.max_num_batched_tokens as f64 * shape.act_bytes_per_token;
    let logit_rows = cfg.max_num_seqs.max(cfg.max_num_batched_tokens);
    let logits = logit_rows as f64 * shape.vocab as f64 * 4.0;
    let reserve = act + logits + (1u64 << 30) as f64;
    let cap = total as f64 * cfg.gpu_memory_utilization;
    let budget = cap - used - reserve;
    if budget <= 0.0 {
        let gib = |b: f64| b / (1u64 << 30) as f64;
        return Err(EngineError::InvalidRequest {
            message: format!(
                "out of GPU memory: --gpu-memory-utilization {} allows {:.1} GiB of the \
                 card's {:.1} GiB; the weights (and whatever else is on the GPU) use {:.1} \
                 GiB and one step's activations, logits and workspaces need {:.1} GiB \
                 (steps of up to {} tokens, --max-num-batched-tokens; logits of {} rows), \
                 which leaves nothing for the KV cache",
                cfg.gpu_memory_utilization,
                gib(cap),
                gib(total as f64),
                gib(used),
                gib(reserve),
                cfg.max_num_batched_tokens,
                logit_rows
            ),
            param: Some("gpu_memory_utilization"),
        });
    }
    Ok(budget as u64)
}

impl LlmEngine {
    pub fn new(
        mut model: Model,
        tokenizer: Arc<Tokenizer>,
        cfg: &EngineConfig,
    ) -> Result<LlmEngine, EngineError> {
        model.set_step_graphs(cfg.step_graphs);
        let gpu = !model.device().is_cpu();
        let async_scheduling = cfg.async_scheduling.unwrap_or(gpu);
        let sample_on_device = cfg.sample_on_device.unwrap_or(gpu || async_scheduling);
        if async_scheduling && !sample_on_device {
            return Err(EngineError::InvalidRequest {
                message: "overlapped steps (async scheduling) need the tokens sampled on the \
                          device"
                    .into(),
                param: Some("async_scheduling"),
            });
        }
        let max_model_len = cfg
            .max_model_len
            .unwrap_or_else(|| model.config.max_position.min(8192))
            .min(model.max_model_len());
        let kv_dtype = cfg
            .kv_cache_dtype
            .unwrap_or_else(|| model.device().default_kv_dtype());
        if !model.device().supports_kv_dtype(kv_dtype) {
            let name = sluice_model::kv_cache::kv_cache_dtype_name;
            let cuda: Vec<String> = sluice_backend::CUDA_KV_CACHE_DTYPES
                .iter()
                .map(|&d| name(d))
                .collect();
            return Err(EngineError::InvalidRequest {
                message: format!(
                    "--kv-cache-dtype {} is not supported on {} (the CUDA backend keeps its \
                     KV cache in {}; the other types are CPU-only for now)",
                    name(kv_dtype),
                    model.device().name(),
                    cuda.join(", ")
                ),
                param: Some("kv_cache_dtype"),
            });
        }
        sluice_model::kv_cache::check_kv_cache_dtype(&model.config, kv_dtype).map_err(|e| {
            EngineError::InvalidRequest {
                message: e.to_string(),
                param: Some("kv_cache_dtype"),
            }
        })?;
        let per_block = KvCache::bytes_per_block(&model.config, cfg.block_size, kv_dtype);
        let num_blocks = match cfg.num_blocks {
            Some(n) => n,
            None => {
                let budget = match cfg.kv_cache_memory {
                    Some(b) => b,
                    None => default_kv_budget(&model, cfg)?,
                };
                // Never more than every sequence at full length could use at once.
                let useful = cfg.max_num_seqs * max_model_len.div_ceil(cfg.block_size);
                ((budget / per_block.max(1) as u64) as usize).min(useful.max(1))
            }
        };
        if num_blocks == 0 {
            return Err(EngineError::InvalidRequest {
                message: format!(
                    "the KV cache budget holds no block of {} tokens ({} bytes each)",
                    cfg.block_size, per_block
                ),
                param: Some("kv_cache_memory"),
            });
        }
        let kv = model.new_kv_cache_with(num_blocks, cfg.block_size, kv_dtype)?;
        let manager = KvCacheManager::new(
            num_blocks,
            cfg.block_size,
            cfg.enable_prefix_caching,
            &model.config.name,
        );
        let sched_cfg = SchedulerConfig {
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_num_seqs: cfg.max_num_seqs,
            block_size: cfg.block_size,
            max_model_len,
            enable_chunked_prefill: true,
            long_prefill_token_threshold: 0,
        };
        let scheduler = Scheduler::new(sched_cfg, manager)?;
        Ok(LlmEngine {
            model,
            kv,
            scheduler,
            tokenizer,
            states: HashMap::new(),
            next_id: 0,
            batch: BatchInput::default(),
            logits: Vec::new(),
            device_ids_dev: None,
            device_ids: Vec::new(),
            logprob_records_dev: None,
            sample_rows: Vec::new(),
            sample_adjust: Vec::new(),
            sampled: Vec::new(),
            metrics: EngineMetrics::default(),
            max_model_len,
            spec: None,
            verify_scratch: VerifyScratch::default(),
            lookahead: None,
            async_scheduling,
            sample_on_device,
            in_flight: None,
        })
    }

    /// Turns on lookahead decoding (see `spec::lookahead`) as the engine's speculative
    /// method. Refuses a shape that does not fit the context or the step budget;
    /// exclusive with `enable_speculation`; call before adding requests.
    pub fn enable_lookahead(
        &mut self,
        cfg: LookaheadConfig,
        spec: &SpecConfig,
    ) -> Result<(), EngineError> {
        if !self.states.is_empty() || self.spec.is_some() {
            return Err(EngineError::Speculative(
                "enable lookahead before adding requests, instead of another method".into(),
            ));
        }
        // The attention kernel bounds a sliding window by a row's KV slot, and lookahead
        // rows sit at slots past their positions: refuse where the window could bind.
        if let Some(w) = self.model.config.sliding_window {
            if w < self.max_model_len {
                return Err(EngineError::Speculative(format!(
                    "lookahead decoding needs full attention, but this model has \
                     sliding-window layers ({w} tokens) shorter than its context ({})",
                    self.max_model_len
                )));
            }
        }
        let sched = self.scheduler.config();
        let la = Lookahead::new(cfg, spec, self.max_model_len, sched.max_num_batched_tokens)
            .map_err(EngineError::Speculative)?;
        self.metrics.spec = vec![la.stats().clone()];
        self.lookahead = Some(la);
        Ok(())
    }

    /// The lookahead state, when enabled.
    pub fn lookahead(&self) -> Option<&Lookahead> {
        self.lookahead.as_ref()
    }

    /// Turns on speculative decoding with `default` as the default proposer (see
    /// `spec`). Refuses a bad configuration; call before adding requests.
    pub fn enable_speculation(
        &mut self,
        cfg: SpecConfig,
        default: Box<dyn Proposer>,
    ) -> Result<(), EngineError> {
        if self.lookahead.is_some() {
            return Err(EngineError::Speculative(
                "lookahead decoding is already the speculative method".into(),
            ));
        }
        if !self.states.is_empty() {
            return Err(EngineError::Speculative(
                "enable speculation before adding requests".into(),
            ));
        }
        self.spec = Some(Speculator::new(cfg, default).map_err(EngineError::Speculative)?);
        self.metrics.spec = self
            .spec
            .as_ref()
            .map_or(Vec::new(), |s| s.stats().to_vec());
        Ok(())
    }

    /// The speculation state, when enabled.
    pub fn speculator(&self) -> Option<&Speculator> {
        self.spec.as_ref()
    }

    /// The speculation state, when enabled (e.g. to register another proposer).
    pub fn speculator_mut(&mut self) -> Option<&mut Speculator> {
        self.spec.as_mut()
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    pub fn num_blocks(&self) -> usize {
        self.kv.num_blocks
    }

    pub fn block_size(&self) -> usize {
        self.kv.block_size
    }

    /// Element type of the KV cache.
    pub fn kv_cache_dtype(&self) -> sluice_backend::DType {
        self.kv.dtype
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Validates and queues a request; errors name the problem (context too long...).
    pub fn add_request(&mut self, req: EngineRequest) -> Result<SeqId, EngineError> {
        let vocab = self.model.config.vocab_size;
        req.params
            .validate(vocab)
            .map_err(|(message, param)| EngineError::InvalidRequest {
                message,
                param: Some(param),
            })?;
        if let Some(&t) = req.prompt_token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidRequest {
                message: format!("prompt token id {t} is outside the vocabulary of {vocab}"),
                param: Some("prompt"),
            });
        }
        if self.lookahead.is_some() {
            let m = req
                .params
                .speculative
                .as_ref()
                .and_then(|o| o.method.as_deref());
            if let Some(m) = m.filter(|m| !matches!(*m, "off" | "lookahead")) {
                return Err(EngineError::InvalidRequest {
                    message: format!(
                        "speculative method `{m}` is not available on this engine (available: \
                         off, lookahead)"
                    ),
                    param: Some("speculative"),
                });
            }
        }
        if let Some(o) = req
            .params
            .speculative
            .as_ref()
            .filter(|_| self.lookahead.is_none())
        {
            let param = Some("speculative");
            match &self.spec {
                Some(spec) => spec
                    .check_override(o)
                    .map_err(|message| EngineError::InvalidRequest { message, param })?,
                None if o.method.as_deref().is_some_and(|m| m != "off") => {
                    return Err(EngineError::InvalidRequest {
                        message: "speculative decoding is not enabled on this engine (start it \
                                  with --speculative or --draft-model)"
                            .into(),
                        param,
                    })
                }
                None => {}
            }
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let mut seq = Sequence::new(id, req.prompt_token_ids.clone(), req.params.max_tokens);
        if let Some(salt) = &req.cache_salt {
            seq = seq.with_cache_salt(salt.clone());
        }
        self.scheduler.add(seq)?;
        if let Some(spec) = &mut self.spec {
            spec.add_seq(id, req.params.speculative.as_ref());
        }
        if let Some(la) = &mut self.lookahead {
            if Lookahead::takes(req.params.speculative.as_ref()) {
                la.add_seq(id, &req.prompt_token_ids, self.tokenizer.eos_ids());
            }
        }
        let sampler = Sampler::new(&req.params, &req.prompt_token_ids);
        let detok =
            IncrementalDecoder::with_prefix(req.params.skip_special_tokens, &req.prompt_token_ids);
        self.states.insert(
            id,
            SeqState {
                params: req.params,
                sampler,
                detok,
                pending: String::new(),
                arrival: Instant::now(),
                first_token: None,
                last_token: None,
            },
        );
        self.metrics.requests_received += 1;
        Ok(id)
    }

    /// Cancels a request; its blocks are freed at once.
    pub fn abort(&mut self, id: SeqId) {
        if self.states.remove(&id).is_some() {
            let _ = self.scheduler.abort(id);
            if let Some(spec) = &mut self.spec {
                spec.remove_seq(id);
            }
            if let Some(la) = &mut self.lookahead {
                la.remove_seq(id);
            }
            self.metrics.requests_aborted += 1;
        }
    }

    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished() || self.in_flight.is_some()
    }

    /// Runs one step. Returns the deltas of every request that produced something.
    ///
    /// With overlapped steps (`EngineConfig::async_scheduling`) a call queues step N + 1
    /// on the device before it reads step N's sampled ids, then finishes step N (stop
    /// checks, detokenization, the deltas) while N + 1 runs: the host's share of a step
    /// hides behind the device's. The deltas of a step come out of the call after the
    /// one that queued it; the tokens are the same as without overlap.
    pub fn step(&mut self) -> Result<Vec<RequestOutput>, EngineError> {
        let Some(prev) = self.in_flight.take() else {
            return match self.launch(None)? {
                Launched::Nothing => Ok(Vec::new()),
                Launched::Queued(next) => {
                    self.in_flight = Some(next);
                    Ok(Vec::new())
                }
                Launched::Done(next) => self.complete(next),
            };
        };
        if !self.may_overlap() {
            // The next step needs this one's tokens on the host first (penalties).
            let mut outputs = self.resolve(prev)?;
            outputs.extend(self.step()?);
            return Ok(outputs);
        }
        let launched = self.launch(Some(&prev));
        let mut outputs = self.resolve(prev)?;
        match launched? {
            Launched::Nothing => {}
            Launched::Queued(next) => {
                self.metrics.overlapped_steps += 1;
                self.in_flight = Some(next);
            }
            Launched::Done(next) => {
                self.metrics.overlapped_steps += 1;
                outputs.extend(self.complete(next)?);
            }
        }
        Ok(outputs)
    }

    /// Whether the next step may be scheduled before the host has the previous step's
    /// tokens: without speculation (its drafts are built from the tokens). Penalties
    /// overlap too: the device sampler counts the token in flight itself
    /// (`SampleParams::pending_token_row`).
    fn may_overlap(&self) -> bool {
        self.async_scheduling && self.spec.is_none() && self.lookahead.is_none()
    }

    /// Schedules and queues one step. `prev`: the step still in flight (its tokens are
    /// taken on the device, `BatchInput::deferred_tokens`).
    fn launch(&mut self, prev: Option<&InFlight>) -> Result<Launched, EngineError> {
        let t0 = Instant::now();
        if prev.is_none() {
            self.propose_drafts()?;
            if let Some(la) = &mut self.lookahead {
                la.propose(&mut self.scheduler, self.max_model_len)?;
            }
        }
        let out = self.scheduler.schedule()?;
        if out.is_empty() {
            return Ok(Launched::Nothing);
        }
        self.scheduler.fill_batch(&out, &mut self.batch)?;
        if let Some(prev) = prev {
            self.defer_pending_tokens(&out, prev)?;
        }
        if let Some(la) = &self.lookahead {
            la.prepare_batch(&out, &mut self.batch)
                .map_err(EngineError::Speculative)?;
        }
        let device = self.model.device().clone();
        // On a GPU, sample on the device unless a token needs the host: speculative
        // verification works on the full logits there. Log-probabilities are taken there too,
        // after the draw (`DeviceLogprobs`).
        let on_device = self.sample_on_device
            && self.spec.is_none()
            && self.lookahead.is_none()
            && out
                .scheduled
                .iter()
                .all(|s| !s.produces_token || s.num_spec_tokens == 0);
        let plain_greedy = on_device
            && out.scheduled.iter().all(|s| {
                !s.produces_token
                    || self
                        .states
                        .get(&s.seq_id)
                        .is_some_and(|st| st.params.is_plain_greedy())
            });
        if on_device && !plain_greedy {
            // Before the forward: draws come from each sequence's generator in step order.
            self.prepare_device_sampling(&out)?;
        }
        let t_forward = Instant::now();
        let prev_ids = prev.and(self.device_ids_dev.as_ref());
        self.model
            .forward_overlapped(&self.batch, &mut self.kv, prev_ids)?;
        let t_wait = Instant::now();
        let queue = self.may_overlap();
        let logprobs = if on_device {
            self.logprob_asks(&out)
        } else {
            DeviceLogprobs::default()
        };
        if !on_device {
            let logits = self.model.logits_mut();
            device
                .copy_f32_to_host(logits, &mut self.logits)
                .map_err(sluice_model::ModelError::from)?;
            return Ok(Launched::Done(Done {
                out,
                on_device,
                ids: Vec::new(),
                logprobs,
                t0,
                t_forward,
                t_wait,
            }));
        }
        let rows = self.model.logits_mut().rows();
        let n_records = logprobs.seqs.len() * LOGPROB_RECORD;
        let ids = device_buffer(&device, &mut self.device_ids_dev, DType::I32, rows)?;
        let records = device_buffer(
            &device,
            &mut self.logprob_records_dev,
            DType::F32,
            n_records,
        )?;
        let (logits, tokens) = self.model.logits_and_tokens();
        let asks: Vec<LogprobAsk> = logprobs
            .seqs
            .iter()
            .map(|&(_, row, n)| LogprobAsk {
                row: row as u32,
                n: n as u32,
            })
            .collect();
        ids.set_len(rows)
            .and_then(|_| records.set_len(n_records))
            .and_then(|_| {
                if plain_greedy {
                    device.argmax(logits, ids)
                } else {
                    let (rows, adjust) = (&self.sample_rows, &self.sample_adjust);
                    device.sample(logits, rows, adjust, Some(tokens), ids)
                }
            })
            .and_then(|_| device.logprobs(logits, ids, &asks, records))
            .map_err(sluice_model::ModelError::from)?;
        let records = (!asks.is_empty()).then_some(&*records);
        if queue {
            let readback = device
                .start_ids_readback(ids, records)
                .map_err(sluice_model::ModelError::from)?;
            self.scheduler.apply_provisional(&out)?;
            let mut rows = HashMap::new();
            let mut row = 0u32;
            for s in &out.scheduled {
                if s.produces_token {
                    rows.insert(s.seq_id, row);
                }
                row += s.num_logits() as u32;
            }
            return Ok(Launched::Queued(InFlight {
                out,
                readback,
                rows,
                logprobs,
                host_before: (t_forward - t0).as_secs_f64(),
                forward: (t_wait - t_forward).as_secs_f64(),
            }));
        }
        let mut host_ids = std::mem::take(&mut self.device_ids);
        let mut logprobs = logprobs;
        device
            .copy_i32_to_host(ids, &mut host_ids)
            .and_then(|_| match records {
                Some(r) => device.copy_f32_to_host(r, &mut logprobs.records),
                None => Ok(()),
            })
            .map_err(sluice_model::ModelError::from)?;
        Ok(Launched::Done(Done {
            out,
            on_device,
            ids: host_ids,
            logprobs,
            t0,
            t_forward,
            t_wait,
        }))
    }

    /// Points every pending token of the batch (`PENDING_TOKEN`, sampled by `prev`) at
    /// its row of `prev`'s ids, which stay on the device.
    fn defer_pending_tokens(
        &mut self,
        out: &SchedulerOutput,
        prev: &InFlight,
    ) -> Result<(), EngineError> {
        let mut row = 0usize;
        for s in &out.scheduled {
            for r in row..row + s.num_new_tokens {
                if self.batch.tokens[r] == PENDING_TOKEN {
                    let src = prev.rows.get(&s.seq_id).copied().ok_or_else(|| {
                        SchedulerError::OutputMismatch(format!(
                            "{}: a pending token that the step in flight does not sample",
                            s.seq_id
                        ))
                    })?;
                    self.batch.tokens[r] = 0;
                    self.batch.deferred_tokens.push((r as u32, src));
                }
            }
            row += s.num_new_tokens;
        }
        Ok(())
    }

    /// Finishes a step whose tokens (or logits) are on the host already.
    fn complete(&mut self, d: Done) -> Result<Vec<RequestOutput>, EngineError> {
        let t_after = Instant::now();
        if d.on_device {
            self.device_ids = d.ids;
        }
        let outputs = self.sample_and_update(&d.out, d.on_device, false, &d.logprobs)?;
        let phases = StepPhases {
            host_before: (d.t_forward - d.t0).as_secs_f64(),
            forward: (d.t_wait - d.t_forward).as_secs_f64(),
            wait: (t_after - d.t_wait).as_secs_f64(),
            host_after: t_after.elapsed().as_secs_f64(),
        };
        self.record_step(&d.out, d.t0.elapsed(), phases);
        Ok(outputs)
    }

    /// Waits for an overlapped step's ids and finishes it.
    fn resolve(&mut self, mut f: InFlight) -> Result<Vec<RequestOutput>, EngineError> {
        let t_wait = Instant::now();
        self.model
            .device()
            .finish_ids_readback(f.readback, &mut self.device_ids, &mut f.logprobs.records)
            .map_err(sluice_model::ModelError::from)?;
        let t_after = Instant::now();
        let outputs = self.sample_and_update(&f.out, true, true, &f.logprobs)?;
        let phases = StepPhases {
            host_before: f.host_before,
            forward: f.forward,
            wait: (t_after - t_wait).as_secs_f64(),
            host_after: t_after.elapsed().as_secs_f64(),
        };
        let took = phases.host_before + phases.forward + phases.wait + phases.host_after;
        self.record_step(&f.out, std::time::Duration::from_secs_f64(took), phases);
        Ok(outputs)
    }

    fn record_step(&mut self, out: &SchedulerOutput, took: std::time::Duration, p: StepPhases) {
        self.metrics
            .record_step(out, took, p, self.scheduler.stats());
        if let Some(spec) = &self.spec {
            self.metrics.spec.clear();
            self.metrics.spec.extend_from_slice(spec.stats());
        }
        if let Some(la) = &self.lookahead {
            self.metrics.spec.clear();
            self.metrics.spec.push(la.stats().clone());
        }
    }

    /// Asks the proposers for drafts for every running sequence in decode state and
    /// hands them to the scheduler (see `spec` for the rule that picks K).
    fn propose_drafts(&mut self) -> Result<(), EngineError> {
        let Some(spec) = self.spec.as_mut() else {
            return Ok(());
        };
        let sched = &self.scheduler;
        let cands: Vec<SeqId> = sched
            .running()
            .iter()
            .copied()
            .filter(|&id| {
                sched
                    .seq(id)
                    .is_some_and(|s| s.num_computed_tokens + 1 == s.num_tokens())
            })
            .collect();
        if cands.is_empty() {
            return Ok(());
        }
        let states = &self.states;
        let max_model_len = self.max_model_len;
        let drafts = spec.propose(&cands, |id| {
            let seq = sched.seq(id)?;
            let st = states.get(&id)?;
            // Room for the drafts plus the target's own token.
            let left = (seq.max_tokens.saturating_sub(seq.num_output_tokens()))
                .min(max_model_len.saturating_sub(seq.num_tokens()));
            Some((
                seq.all_token_ids(),
                seq.num_prompt_tokens(),
                &st.params,
                left.saturating_sub(1),
            ))
        })?;
        for (id, d) in drafts {
            self.scheduler.set_spec_token_ids(id, d)?;
        }
        Ok(())
    }

    /// This step's sequences that want log-probabilities (device sampling: one logits
    /// row per token-producing sequence).
    fn logprob_asks(&self, out: &SchedulerOutput) -> DeviceLogprobs {
        let mut asks = DeviceLogprobs::default();
        let mut row = 0usize;
        for s in &out.scheduled {
            let wants = self
                .states
                .get(&s.seq_id)
                .and_then(|st| st.params.logprobs)
                .filter(|_| s.produces_token);
            if let Some(n) = wants {
                asks.seqs.push((s.seq_id, row, n));
            }
            row += s.num_logits();
        }
        asks
    }

    /// Fills `sample_rows` / `sample_adjust` for this step's logits rows (one per
    /// sequence that produces a token; no speculative rows on this path).
    fn prepare_device_sampling(&mut self, out: &SchedulerOutput) -> Result<(), EngineError> {
        self.sample_rows.clear();
        self.sample_adjust.clear();
        // Rows whose token the step in flight samples (overlapped steps): the host has
        // not counted it for the penalties yet, so the device sampler does.
        let deferred: std::collections::HashSet<u32> =
            self.batch.deferred_tokens.iter().map(|&(r, _)| r).collect();
        let mut row = 0usize;
        for s in &out.scheduled {
            let rows = row..row + s.num_new_tokens;
            row += s.num_new_tokens;
            if !s.produces_token {
                continue;
            }
            let state = self
                .states
                .get_mut(&s.seq_id)
                .ok_or(EngineError::Scheduler(SchedulerError::UnknownSeq(s.seq_id)))?;
            let start = self.sample_adjust.len();
            state
                .sampler
                .logit_adjustments(&state.params, &mut self.sample_adjust);
            let p = &state.params;
            let uniform = if p.is_greedy() {
                0.0
            } else {
                state.sampler.uniform()
            };
            let pending_token_row = match p.depends_on_history() {
                true => rows
                    .rev()
                    .find(|&r| deferred.contains(&(r as u32)))
                    .map_or(-1, |r| r as i32),
                false => -1,
            };
            self.sample_rows.push(SampleParams {
                temperature: if p.is_greedy() { 0.0 } else { p.temperature },
                top_k: p.top_k as u32,
                top_p: p.top_p,
                min_p: p.min_p,
                uniform,
                repetition: p.repetition_penalty,
                presence: p.presence_penalty,
                frequency: p.frequency_penalty,
                pending_token_row,
                adjust_start: start as u32,
                adjust_len: (self.sample_adjust.len() - start) as u32,
            });
        }
        Ok(())
    }

    fn sample_and_update(
        &mut self,
        out: &SchedulerOutput,
        // This step's tokens were sampled on the device, into `device_ids`.
        on_device: bool,
        // The step was applied with `Scheduler::apply_provisional` (overlapped).
        provisional: bool,
        // Device sampling: the unprocessed logits of the sequences with log-probabilities.
        logprobs: &DeviceLogprobs,
    ) -> Result<Vec<RequestOutput>, EngineError> {
        let vocab = self.model.config.vocab_size;
        let mut device_logprobs = if on_device && !logprobs.seqs.is_empty() {
            logprobs.tokens(&self.device_ids)?
        } else {
            HashMap::new()
        };
        self.sampled.resize(out.scheduled.len(), Vec::new());
        let mut row = 0usize;
        let mut logprobs: Vec<Vec<SampledToken>> = Vec::with_capacity(out.scheduled.len());
        for (i, s) in out.scheduled.iter().enumerate() {
            self.sampled[i].clear();
            let mut lp = Vec::new();
            if !self.states.contains_key(&s.seq_id) {
                // Finished while this step was in flight (a stop found when the step
                // before it was resolved; overlapped steps): its token is dropped.
                row += s.num_logits();
                logprobs.push(lp);
                continue;
            }
            let by_lookahead = s.produces_token
                && self
                    .lookahead
                    .as_ref()
                    .is_some_and(|la| la.handles(s.seq_id));
            if let (true, Some(la)) = (by_lookahead, self.lookahead.as_mut()) {
                // Lookahead verifies its own branches (and delivers forced tokens).
                let state = self
                    .states
                    .get_mut(&s.seq_id)
                    .ok_or(EngineError::Scheduler(SchedulerError::UnknownSeq(s.seq_id)))?;
                let rows = &mut self.logits[row * vocab..(row + s.num_logits()) * vocab];
                let want_lp = state.params.logprobs.is_some();
                let (sampler, params) = (&mut state.sampler, &state.params);
                let sample = |l: &mut [f32]| {
                    let t = sampler.sample(params, l);
                    sampler.observe(t.id);
                    t
                };
                la.verify(
                    s,
                    rows,
                    vocab,
                    want_lp,
                    sample,
                    &mut self.sampled[i],
                    &mut lp,
                )
                .map_err(EngineError::Speculative)?;
            } else if s.produces_token && s.num_spec_tokens > 0 {
                // Verify the drafts (several tokens for this sequence this step).
                let state = self
                    .states
                    .get_mut(&s.seq_id)
                    .ok_or(EngineError::Scheduler(SchedulerError::UnknownSeq(s.seq_id)))?;
                let seq = self
                    .scheduler
                    .seq(s.seq_id)
                    .ok_or(EngineError::Scheduler(SchedulerError::UnknownSeq(s.seq_id)))?;
                let drafts = seq.spec_token_ids.get(..s.num_spec_tokens).ok_or_else(|| {
                    EngineError::Speculative(format!(
                        "{}: {} drafts scheduled, {} proposed",
                        s.seq_id,
                        s.num_spec_tokens,
                        seq.spec_token_ids.len()
                    ))
                })?;
                let rows = &mut self.logits[row * vocab..(row + s.num_logits()) * vocab];
                let q = self
                    .spec
                    .as_ref()
                    .map_or(&[][..], |sp| sp.draft_probs(s.seq_id));
                let eos = self.tokenizer.eos_ids();
                let p = &state.params;
                let is_stop =
                    |t: u32| (!p.ignore_eos && eos.contains(&t)) || p.stop_token_ids.contains(&t);
                let accepted = verify_seq(
                    &mut state.sampler,
                    &state.params,
                    rows,
                    vocab,
                    drafts,
                    q,
                    is_stop,
                    &mut self.verify_scratch,
                    &mut self.sampled[i],
                    &mut lp,
                )
                .map_err(EngineError::Speculative)?;
                if let Some(spec) = &mut self.spec {
                    spec.on_verified(&VerifyFeedback {
                        seq_id: s.seq_id,
                        drafted: drafts,
                        num_accepted: accepted,
                        emitted: &self.sampled[i],
                    });
                }
            } else if s.produces_token && on_device {
                let state = self
                    .states
                    .get_mut(&s.seq_id)
                    .ok_or(EngineError::Scheduler(SchedulerError::UnknownSeq(s.seq_id)))?;
                let id = self.device_ids.get(row).copied().ok_or_else(|| {
                    sluice_model::ModelError::from(BackendError::Shape(format!(
                        "device sampling: no id for logits row {row}"
                    )))
                })? as u32;
                state.sampler.observe(id);
                self.sampled[i].push(id);
                if state.params.logprobs.is_some() {
                    let t = device_logprobs.remove(&s.seq_id).ok_or_else(|| {
                        sluice_model::ModelError::from(BackendError::Shape(format!(
                            "device sampling: no log-probabilities kept for {}",
                            s.seq_id
                        )))
                    })?;
                    lp.push(t);
                }
            } else if s.produces_token {
                let state = self
                    .states
                    .get_mut(&s.seq_id)
                    .ok_or(EngineError::Scheduler(SchedulerError::UnknownSeq(s.seq_id)))?;
                let slice = &mut self.logits[row * vocab..(row + 1) * vocab];
                let tok = state.sampler.sample(&state.params, slice);
                state.sampler.observe(tok.id);
                self.sampled[i].push(tok.id);
                if state.params.logprobs.is_some() {
                    lp.push(tok);
                }
            }
            row += s.num_logits();
            logprobs.push(lp);
        }
        if provisional {
            self.scheduler.resolve_provisional(out, &self.sampled)?;
        } else {
            self.scheduler.update_from_output(out, &self.sampled)?;
        }
        let now = Instant::now();
        let mut outputs = Vec::new();
        for ((s, toks), lp) in out.scheduled.iter().zip(&self.sampled).zip(logprobs) {
            if toks.is_empty() {
                continue;
            }
            let Some(state) = self.states.get_mut(&s.seq_id) else {
                continue;
            };
            match state.first_token {
                None => {
                    state.first_token = Some(now);
                    self.metrics
                        .ttft
                        .observe((now - state.arrival).as_secs_f64());
                }
                Some(_) => {
                    if let Some(last) = state.last_token {
                        self.metrics.itl.observe((now - last).as_secs_f64());
                    }
                }
            }
            state.last_token = Some(now);
            self.metrics.generation_tokens += toks.len() as u64;
            let Some(seq) = self.scheduler.seq(s.seq_id) else {
                continue;
            };
            // Not counting a token of the next step, still in flight (overlapped steps).
            let (n_prompt, n_out, n_cached) = (
                seq.num_prompt_tokens(),
                seq.num_output_tokens() - seq.num_pending(),
                seq.num_cached_tokens,
            );
            let mut finished = None;
            let mut text = String::new();
            for &t in toks {
                let is_eos = self.tokenizer.eos_ids().contains(&t) && !state.params.ignore_eos;
                if is_eos || state.params.stop_token_ids.contains(&t) {
                    finished = Some(FinishReason::Stop);
                    break;
                }
                let piece = state
                    .detok
                    .push(&self.tokenizer, t)
                    .map_err(EngineError::Model)?;
                state.pending.push_str(&piece);
            }
            if finished.is_none()
                && (n_out >= state.params.max_tokens || n_prompt + n_out >= self.max_model_len)
            {
                finished = Some(FinishReason::Length);
            }
            if finished.is_some() {
                let rest = state
                    .detok
                    .flush(&self.tokenizer)
                    .map_err(EngineError::Model)?;
                state.pending.push_str(&rest);
            }
            // Stop strings: cut at the first match; otherwise hold back a tail that could
            // still grow into one.
            if let Some(cut) = find_stop(&state.pending, &state.params.stop) {
                state.pending.truncate(cut);
                finished = Some(FinishReason::Stop);
            }
            let keep = if finished.is_some() {
                0
            } else {
                stop_prefix_len(&state.pending, &state.params.stop)
            };
            let emit = state.pending.len() - keep;
            text.push_str(&state.pending[..emit]);
            state.pending.drain(..emit);
            outputs.push(RequestOutput {
                id: s.seq_id,
                new_token_ids: toks.clone(),
                new_text: text,
                logprobs: lp,
                finished,
                num_prompt_tokens: n_prompt,
                num_output_tokens: n_out,
                num_cached_tokens: n_cached,
            });
            if let Some(reason) = finished {
                if let Some(st) = self.states.remove(&s.seq_id) {
                    self.metrics.e2e.observe(st.arrival.elapsed().as_secs_f64());
                }
                self.metrics.prompt_tokens += n_prompt as u64;
                self.metrics.requests_finished += 1;
                self.scheduler.finish(s.seq_id, reason)?;
                if let Some(spec) = &mut self.spec {
                    spec.remove_seq(s.seq_id);
                }
                if let Some(la) = &mut self.lookahead {
                    la.remove_seq(s.seq_id);
                }
            }
        }
        Ok(outputs)
    }

    /// Runs steps until every queued request finished (offline use: generate, benches).
    pub fn run_to_completion<F: FnMut(&RequestOutput)>(
        &mut self,
        mut on_output: F,
    ) -> Result<(), EngineError> {
        while self.has_unfinished() {
            for o in self.step()? {
                on_output(&o);
            }
        }
        Ok(())
    }
}

/// Byte offset of the earliest stop string in `text`.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// Length of the longest suffix of `text` that is a proper prefix of some stop string
/// (held back until we know whether the stop string completes).
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                best = best.max(i);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gpu_kv_budget_is_what_the_weights_and_one_step_leave() {
        // Llama-3.1-8B's layer shapes (hidden 4096, FFN 14336, 32 heads of 128) with the
        // benchmark vocabulary, on a 140 GiB card whose weights took 14.3 GiB.
        let act_per_token = 4.0 * (6.0 * 4096.0 + 4.0 * 14336.0 + 2.0 * 4096.0);
        let shape = StepShape {
            act_bytes_per_token: act_per_token,
            vocab: 49_152,
        };
        let gib = 1u64 << 30;
        let (total, free) = (140 * gib, 140 * gib - 143 * gib / 10);
        let cfg = EngineConfig {
            max_num_batched_tokens: 8192,
            max_num_seqs: 256,
            gpu_memory_utilization: 0.9,
            ..EngineConfig::default()
        };
        let act = 8192.0 * act_per_token;
        let logits = 8192.0 * 49_152.0 * 4.0;
        let want = 140.0 * gib as f64 * 0.9 - 14.3 * gib as f64 - act - logits - gib as f64;
        let got = gpu_kv_budget(total, free, shape, &cfg).unwrap() as f64;
        assert!(
            (got - want).abs() < 2.0 * gib as f64 / 10.0,
            "{got} vs {want}"
        );
        // A whole batch's prefill in one step (bench latency: 256 x 1,536 tokens) needs
        // more than the card: the error says so, not just that the weights are there.
        let cfg = EngineConfig {
            max_num_batched_tokens: 256 * 1536,
            ..cfg
        };
        match gpu_kv_budget(total, free, shape, &cfg) {
            Err(EngineError::InvalidRequest { message, param }) => {
                assert_eq!(param, Some("gpu_memory_utilization"));
                for part in [
                    "393216 tokens",
                    "--max-num-batched-tokens",
                    "14.3 GiB",
                    "126.0 GiB",
                ] {
                    assert!(message.contains(part), "{part} not in: {message}");
                }
            }
            other => panic!("expected an out-of-memory error, got {other:?}"),
        }
    }

    #[test]
    fn stop_strings_are_found_and_prefixes_held_back() {
        let stops = vec!["END".to_string(), "\n\n".to_string()];
        assert_eq!(find_stop("abc END def", &stops), Some(4));
        assert_eq!(find_stop("a\n\nb END", &stops), Some(1));
        assert_eq!(find_stop("nothing", &stops), None);
        assert_eq!(stop_prefix_len("the EN", &stops), 2);
        assert_eq!(stop_prefix_len("line\n", &stops), 1);
        assert_eq!(stop_prefix_len("plain", &stops), 0);
    }
}
