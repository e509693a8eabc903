"""A worker for the tests: an ordinary function made an agent with `@agent`.
It also prints to stdout, which the helper must keep off the protocol."""

import time

from swarmdirector.worker import TaskError, agent


@agent
def summarise(text: str, max_words: int = 3, pause_s: float = 0, task=None):
    print("a stray print from the agent's own code")
    if not text.strip():
        raise TaskError("empty_text", "text is empty", retryable=False)
    task.progress({"words": len(text.split())})
    time.sleep(pause_s)  # so a test can subscribe while it runs
    if max_words < 0:
        return {"nan": float("nan")}  # not JSON: the helper answers bad_result
    return {"summary": " ".join(text.split()[:max_words]), "request_id": task.request_id}


if __name__ == "__main__":
    summarise.run()
