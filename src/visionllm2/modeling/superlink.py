"""Super links: per-family learned query tables and per-decoder projections (paper §3.2)."""

from __future__ import annotations

import torch
from torch import nn

from visionllm2.config import FamilyConfig


class SuperLink(nn.Module):
    """Holds the K learnable queries of every routing family and one MLP per decoder that
    maps the LLM's hidden states at those queries to the decoder's link width.

    Queries are separate tables, not vocabulary rows: the LM is never trained to emit them,
    they are written into the input right after each routing token.
    """

    def __init__(
        self,
        *,
        families: dict[str, FamilyConfig],
        hidden_size: int,
        link_dims: dict[str, int],
        init_std: float = 0.02,
    ):
        super().__init__()
        self.family_names = list(families)
        self.family_decoder = [f.decoder for f in families.values()]
        self.num_queries = [f.num_queries for f in families.values()]
        self.queries = nn.ParameterDict(
            {
                name: nn.Parameter(torch.randn(f.num_queries, hidden_size) * init_std)
                for name, f in families.items()
            }
        )
        self.projections = nn.ModuleDict(
            {
                dec: nn.Sequential(
                    nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, dim)
                )
                for dec, dim in link_dims.items()
            }
        )

    def query_embeds(self, family: torch.Tensor) -> torch.Tensor:
        """family (L,) -> the queries of each link, concatenated: (sum K_l, D)."""
        if family.numel() == 0:
            return next(iter(self.queries.values())).new_zeros(0, next(iter(self.queries.values())).shape[1])
        return torch.cat([self.queries[self.family_names[f]] for f in family.tolist()])

    def query_positions(self, sample: torch.Tensor, pos: torch.Tensor, family: torch.Tensor):
        """(rows, cols) of every query slot, matching :meth:`query_embeds`' order."""
        ks = torch.tensor([self.num_queries[f] for f in family.tolist()], dtype=torch.long, device=pos.device)
        rows = torch.repeat_interleave(sample, ks)
        starts = torch.repeat_interleave(pos, ks)
        offsets = torch.arange(int(ks.sum()), device=pos.device) - torch.repeat_interleave(
            torch.cumsum(ks, 0) - ks, ks
        )
        return rows, starts + offsets

    def project(self, decoder: str, states: torch.Tensor) -> torch.Tensor:
        """states (L, K, D) hidden states at the queries -> (L, K, D_link)."""
        return self.projections[decoder](states)
