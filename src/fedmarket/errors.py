"""Exception hierarchy: one root, specific subclasses, each message naming the problem."""


class FedMarketError(Exception):
    """Root of every error fedmarket raises on purpose."""


class ConfigError(FedMarketError, ValueError):
    """A user-supplied setting is invalid (bad CLI option, bad job spec value)."""


class SchemaMismatch(FedMarketError, ValueError):
    """Local data does not match the job's data schema."""


class UnknownDatasetError(ConfigError):
    """A dataset name that fedmarket does not know."""


class ChainError(FedMarketError):
    """The chain or node could not do what was asked (connection, node start, funding)."""


class ContractRevert(ChainError):
    """A contract call or transaction reverted; `reason` is the decoded revert string."""

    def __init__(self, reason: str, function: str = ""):
        self.reason = reason
        self.function = function
        super().__init__(f"{function}: {reason}" if function else reason)


class StorageError(FedMarketError):
    """A blob is missing, or its bytes do not hash to the content id it was asked by."""


class StorageUnreachable(StorageError):
    """The content store or broker could not be reached or did not answer: this says nothing about
    the data, so a judge of a round retries rather than calling its data unavailable."""


class MissingAfterQuorum(StorageUnreachable):
    """A round's data is missing and the round already has its quorum: a rejection now fails nobody
    and only costs the judge its fee for the round, so it looks again while the votes are open."""


class BlobNotFound(StorageError):
    """The store answered, and holds no blob of that content id (never put, or deleted since)."""


class BlobCorrupted(BlobNotFound):
    """The store holds bytes under that content id that are not its blob (anyone on a shared store
    can overwrite one): no intact copy there, as if it were missing."""


class BlobTooLarge(StorageError):
    """A blob over the size its reader takes (for good: a content id always names the same bytes)."""


class PrivacyError(FedMarketError):
    """A privacy mechanism or protocol could not run as asked."""


class PrivacyBudgetExceeded(PrivacyError):
    """A round would spend more (epsilon, delta) than the job's budget allows; nothing was spent."""


class AlreadyReleased(PrivacyError):
    """A provider already released an update (noisy or masked) for this job and round: a second one
    would average the noise away or reuse masks, so it is refused (`privacy.releases`)."""


class SecAggAbort(PrivacyError):
    """A secure-aggregation round aborted (too few survivors, a tampered share); no aggregate exists and no funds move."""


class ShareTampered(SecAggAbort):
    """A secret share failed authentication or did not reconstruct to the committed secret."""


class KeystoreError(ConfigError):
    """An account keystore is missing, unreadable or corrupt, or its password is wrong."""


class ModelOutOfRange(FedMarketError):
    """A round's exact model leaves int64 (numpy would wrap where the chain's int256 does not):
    no committed model can hold it. `index` is the first value out of range."""

    def __init__(self, index: int):
        super().__init__(f"the exact model leaves int64 at value {index}: no committed model can hold it")
        self.index = index


class MalformedMessage(FedMarketError, ValueError):
    """A message or document read from the mailbox or the content store (anyone writes there)
    that is not well-formed JSON of bounded size and depth with finite numbers, or whose
    signature recovers no key. Handled as any bad input: that one message is dropped."""
