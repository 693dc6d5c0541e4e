"""LangChain integration for streamrag: a chat model, a completion LLM and a retriever over the archive.

>>> from langchain_streamrag import ChatStreamRAG
>>> chat = ChatStreamRAG(session_id="ada")          # embedded SmolLM2; the session keeps its KV cache
>>> chat.invoke("Hi! My locker code is 5521.")
"""

from langchain_streamrag.chat_models import ChatStreamRAG
from langchain_streamrag.llms import StreamRAG
from langchain_streamrag.retrievers import StreamRAGRetriever

__all__ = ["ChatStreamRAG", "StreamRAG", "StreamRAGRetriever"]
