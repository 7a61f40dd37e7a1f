namespace SafeSockets;

/// <summary>What a close did.</summary>
/// <param name="Outcome">Why the close ended; see <see cref="CloseOutcome"/>.</param>
/// <param name="BytesDrained">Bytes read from the socket and discarded while draining before the release.</param>
/// <param name="Elapsed">Time from the start of the close to the release of the socket.</param>
public readonly record struct CloseResult(CloseOutcome Outcome, long BytesDrained, TimeSpan Elapsed);
