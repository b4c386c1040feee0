"""An llm.c-style LayerNorm: a class of static ``forward(x, w, b) -> (out, cache)`` and
``backward(dout, cache) -> (dx, dw, db)`` for (B, T, C) activations, wrapped in a layer."""

EPS = 1e-5


class LayerNormMath:
    @staticmethod
    def forward(x, w, b):
        _, _, c = x.size()
        mean = x.sum(-1, keepdim=True) / c
        xshift = x - mean
        var = (xshift**2).sum(-1, keepdim=True) / c
        rstd = (var + EPS) ** -0.5
        norm = xshift * rstd
        out = norm * w + b
        return out, (x, w, mean, rstd)

    @staticmethod
    def backward(dout, cache):
        x, w, mean, rstd = cache
        norm = (x - mean) * rstd
        db = dout.sum((0, 1))
        dw = (dout * norm).sum((0, 1))
        dnorm = dout * w
        dx = dnorm - dnorm.mean(-1, keepdim=True) - (dnorm * norm).mean(-1, keepdim=True) * norm
        dx *= rstd
        return dx, dw, db


class LayerNormMathFirstRow(LayerNormMath):
    @staticmethod
    def backward(dout, cache):
        dx, _, db = LayerNormMath.backward(dout, cache)
        x, _, mean, rstd = cache
        norm = (x - mean) * rstd
        dw = (dout[0] * norm[0]).sum(0)  # BUG: written for B = 1
        return dx, dw, db


class LayerNormMathNoProjection(LayerNormMath):
    @staticmethod
    def backward(dout, cache):
        _, dw, db = LayerNormMath.backward(dout, cache)
        _, w, _, rstd = cache
        dnorm = dout * w
        dx = (dnorm - dnorm.mean(-1, keepdim=True)) * rstd  # BUG: the norm term is missing
        return dx, dw, db


class LayerNorm:
    math = LayerNormMath

    def __init__(self, w, b):
        self.w, self.b = w, b

    def __call__(self, x):
        self.x = x
        self.out, self.cache = self.math.forward(x, self.w, self.b)
        return self.out

    def backward(self, dout):
        self.x.g, self.w.g, self.b.g = self.math.backward(dout, self.cache)


class LayerNormBatchOne(LayerNorm):
    """BUG: dw right only for a batch of one sequence."""

    math = LayerNormMathFirstRow


class LayerNormNoProjection(LayerNorm):
    """BUG: dx misses the -norm * mean(dnorm * norm) term."""

    math = LayerNormMathNoProjection
