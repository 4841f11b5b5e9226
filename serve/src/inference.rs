//! The one path of a v2 inference request after its transport decoded it, shared by HTTP
//! and gRPC: output selection, input order, the scoring API, classification and shared
//! memory placement, then the request's metrics and Triton statistics.

use crate::AppState;
use modelpod_http::ApiError;
use modelpod_scoring::ServedModel;
use modelpod_scoring::scorer::Slot;
use modelpod_scoring::statistics::RequestTimes;
use modelpod_scoring::v2::{self, FinishedOutput, InferRequest};
use std::future::Future;
use std::time::{Duration, Instant};

/// A request as its transport prepared it: a scoring slot, the decoded request, and how long
/// decoding took (Triton's compute_input).
pub struct Prepared<'s> {
    pub slot: Slot<'s>,
    pub request: InferRequest,
    pub decode_time: Duration,
}

/// What the transport encodes.
pub struct Answered {
    pub id: Option<String>,
    pub outputs: Vec<FinishedOutput>,
}

/// Runs one v2 request. `prepare` reads, admits and decodes (in the order the transport
/// needs); its failures count as this request's too.
pub async fn infer_v2<'s>(
    state: &'s AppState,
    model: &ServedModel,
    arrival: Instant,
    protocol: &'static str,
    prepare: impl Future<Output = Result<Prepared<'s>, ApiError>>,
) -> Result<Answered, ApiError> {
    let result = async {
        let Prepared {
            slot,
            request,
            decode_time,
        } = prepare.await?;
        let selected = request.selected_outputs(&model.signature)?;
        let id = request.id;
        let inputs = model.order_inputs(request.inputs)?;
        let rows = match (model.policy.batches(), inputs.first()) {
            (true, Some(first)) => first.rows(),
            _ => 1,
        };
        let output = state
            .scorer
            .run(slot, model, inputs, request.sequence, arrival)
            .await?;
        let encoding = Instant::now();
        let outputs = v2::finish_outputs(
            &selected,
            &model.signature,
            output.outputs,
            model.policy.batches(),
            |i| model.pipeline.labels(i),
            Some(&state.shared_memory),
        )?;
        let times = RequestTimes {
            total: arrival.elapsed(),
            queue: output.queue_time,
            compute_input: decode_time,
            compute_infer: output.compute_time,
            compute_output: encoding.elapsed(),
        };
        crate::metrics::record_scoring_times(&model.name, times.queue, times.compute_infer);
        Ok::<_, ApiError>((Answered { id, outputs }, rows, times))
    }
    .await;
    crate::metrics::record_request(protocol, &model.name, arrival, None, result.as_ref().err());
    match result {
        Ok((answered, rows, times)) => {
            model.statistics.record_success(rows, times);
            Ok(answered)
        }
        Err(e) => {
            model.statistics.record_failure(arrival.elapsed());
            Err(e)
        }
    }
}
