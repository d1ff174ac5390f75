# pragma version 0.4.3
# pragma evm-version cancun
"""
@title Test token whose transfers can be told to return false instead of reverting
@notice Tests only (tests/contracts/test_token_failures.py): the contracts must refuse a token
        transfer that reports failure, with their own reason.
@license AGPL-3.0-only
"""

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256


event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256


balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
totalSupply: public(uint256)
# @dev While set, `transfer` / `transferFrom` move nothing and return false.
fail_transfer: public(bool)
fail_transfer_from: public(bool)


@external
def mint(to: address, amount: uint256):
    self.balanceOf[to] += amount
    self.totalSupply += amount
    log Transfer(sender=empty(address), receiver=to, value=amount)


@external
def set_failing(transfer: bool, transfer_from: bool):
    self.fail_transfer = transfer
    self.fail_transfer_from = transfer_from


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log Approval(owner=msg.sender, spender=spender, value=amount)
    return True


@external
def transfer(to: address, amount: uint256) -> bool:
    if self.fail_transfer:
        return False
    self.balanceOf[msg.sender] -= amount
    self.balanceOf[to] += amount
    log Transfer(sender=msg.sender, receiver=to, value=amount)
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    if self.fail_transfer_from:
        return False
    self.allowance[owner][msg.sender] -= amount
    self.balanceOf[owner] -= amount
    self.balanceOf[to] += amount
    log Transfer(sender=owner, receiver=to, value=amount)
    return True
