/** GET /v1/models and /v1/models/{id}. */
import { ModelNotFoundError } from "../errors.ts";
import type { ServingState } from "./serving.ts";

function card(state: ServingState) {
  const model = state.model!;
  return {
    id: model.modelId,
    object: "model",
    created: model.createdAt,
    owned_by: "gpt-oss-deno",
    root: model.modelId,
    parent: null,
    max_model_len: model.engine.maxModelLen,
  };
}

/** The list of served models (empty while loading). */
export function listModels(state: ServingState): unknown {
  return { object: "list", data: state.model ? [card(state)] : [] };
}

/** One model, or ModelNotFoundError. */
export function getModel(state: ServingState, id: string): unknown {
  if (!state.model || state.model.modelId !== id) throw new ModelNotFoundError(`The model "${id}" does not exist`);
  return card(state);
}
