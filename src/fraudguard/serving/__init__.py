"""The scoring gateway (`fraudguard serve`): raw transactions in, decisions of the verified champion out.

Modules: schema (request/response models and their ranges), state (the online feature store), champion
(resolve, verify and load `@champion`; follow promote and rollback), security (API keys, rate limit, body
size), predictions (the prediction log), app (the FastAPI application). See docs/serving.md.
"""
