# pragma version 0.4.3
# pragma evm-version cancun
"""
@title fedmarket token
@notice The ERC-20 token in which rewards are escrowed and stakes are locked.
        Built from snekmate's audited `erc20` module (with EIP-2612 permit);
        the deployer is owner and first minter.
@license AGPL-3.0-only
"""

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: erc20.__interface__


@deploy
def __init__(name_: String[25], symbol_: String[5], name_eip712_: String[50], version_eip712_: String[20]):
    """
    @notice Deploys the token with 18 decimals; `msg.sender` becomes owner and minter.
    @param name_ Token name.
    @param symbol_ Token symbol.
    @param name_eip712_ EIP-712 domain name used by `permit`.
    @param version_eip712_ EIP-712 domain version used by `permit`.
    """
    ownable.__init__()
    erc20.__init__(name_, symbol_, 18, name_eip712_, version_eip712_)
