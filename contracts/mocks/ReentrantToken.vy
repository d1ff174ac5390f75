# pragma version 0.4.3
# pragma evm-version cancun
"""
@title Malicious ERC-20 for tests: re-enters a target on every outgoing transfer
@notice On `transfer` and `transferFrom` it first moves the balances, then calls
        `target` with `payload` (once per transfer, not recursively), swallowing any
        revert and counting how many re-entries succeeded. Tests only.
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
# @dev Contract to re-enter and the calldata to send it.
target: public(address)
payload: public(Bytes[2048])
# @dev Re-entry attempts and how many of them succeeded.
attempts: public(uint256)
successes: public(uint256)
_in_attack: bool


@external
def mint(to: address, amount: uint256):
    self.balanceOf[to] += amount
    self.totalSupply += amount
    log Transfer(sender=empty(address), receiver=to, value=amount)


@external
def arm(target: address, payload: Bytes[2048]):
    self.target = target
    self.payload = payload


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log Approval(owner=msg.sender, spender=spender, value=amount)
    return True


@external
def transfer(to: address, amount: uint256) -> bool:
    self._move(msg.sender, to, amount)
    self._attack()
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    self.allowance[owner][msg.sender] -= amount
    self._move(owner, to, amount)
    self._attack()
    return True


@internal
def _move(owner: address, to: address, amount: uint256):
    self.balanceOf[owner] -= amount
    self.balanceOf[to] += amount
    log Transfer(sender=owner, receiver=to, value=amount)


@internal
def _attack():
    if self.target == empty(address) or self._in_attack:
        return
    self._in_attack = True
    self.attempts += 1
    ok: bool = raw_call(self.target, self.payload, revert_on_failure=False)
    if ok:
        self.successes += 1
    self._in_attack = False
