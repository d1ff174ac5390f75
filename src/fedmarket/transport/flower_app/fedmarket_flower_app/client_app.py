"""The ClientApp (on each provider's SuperNode): trains the round with the market's provider code
and answers with its signed commitment (fedmarket.transport.flower.train_on_node); given the
aggregator's seal, it reveals the signed round message and the update blob (reveal_on_node);
after the rounds it files the rewards document its claim needs (file_on_node)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedmarket.transport.flower import file_on_node, reveal_on_node, train_on_node

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return train_on_node(msg, context)


@app.train("reveal")
def reveal(msg: Message, context: Context) -> Message:
    return reveal_on_node(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return file_on_node(msg, context)
