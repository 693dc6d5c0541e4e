"""A LlamaIndex chat engine on a persistent streamrag session.

python integrations/examples/llamaindex_chat_engine.py
"""

from __future__ import annotations

from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.llms.streamrag import StreamRAGLLM


def main(resources=None, max_new_tokens: int = 48) -> list[str]:
    llm = StreamRAGLLM(resources=resources, session_id="llamaindex-demo", max_new_tokens=max_new_tokens, temperature=0)
    engine = SimpleChatEngine.from_defaults(llm=llm, system_prompt="You are a friendly assistant.")
    session = llm.get_session()
    replies = []
    for question in ["Hi! My name is Ada and I love astronomy.", "What do I love?"]:
        print(f"> {question}")
        before = session.lm.stats().prefilled_tokens
        streaming = engine.stream_chat(question)
        for piece in streaming.response_gen:
            print(piece, end="", flush=True)
        print()
        print(f"  [prefilled {session.lm.stats().prefilled_tokens - before} new tokens]")
        replies.append(streaming.response)
    return replies


if __name__ == "__main__":
    main()
